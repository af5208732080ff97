//! A bounded steady load through the load balancer: a fixed request rate from the host,
//! every answer checked, every failure kept. One request in five streams; one in four goes
//! to the Vertex AI route (`auth.gcp`: its token comes through the token cache), the rest
//! to the OpenAI route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Requests per second the load aims at, and the hard cap on how long it may run.
pub const RATE: u64 = 300;
const WORKERS: u64 = 12;
const MAX_RUN: Duration = Duration::from_secs(240);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The Vertex AI route of deploy/routes/vertex.json.
pub const VERTEX_PATH: &str = "/vertex/v1/chat/completions";

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    streams: AtomicU64,
    vertex: AtomicU64,
}

pub struct Load {
    name: String,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

#[derive(Debug)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

/// Starts the load against `lb` (`http://127.0.0.1:PORT`).
pub fn start(name: &str, lb: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let urls = Arc::new([format!("{lb}/v1/chat/completions"), format!("{lb}{VERTEX_PATH}")]);
    let workers = (0..WORKERS)
        .map(|w| {
            let (stop, counters, errors, urls) = (stop.clone(), counters.clone(), errors.clone(), urls.clone());
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let period = Duration::from_micros(1_000_000 * WORKERS / RATE);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period * w as u32 / WORKERS as u32, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_RUN {
                    tick.tick().await;
                    n += 1;
                    let stream = (n + w).is_multiple_of(5);
                    let vertex = (n + w) % 4 == 2;
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    if stream {
                        counters.streams.fetch_add(1, Ordering::Relaxed);
                    }
                    if vertex {
                        counters.vertex.fetch_add(1, Ordering::Relaxed);
                    }
                    match tokio::time::timeout(REQUEST_TIMEOUT, one(&client, &urls[usize::from(vertex)], stream)).await {
                        Ok(Ok(())) => {
                            counters.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        outcome => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            let why = match outcome {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => format!("no answer in {REQUEST_TIMEOUT:?}"),
                            };
                            let mut errs = errors.lock().unwrap();
                            if errs.len() < 20 {
                                errs.push(format!("t={:.2}s vertex={vertex} stream={stream}: {why}", started.elapsed().as_secs_f64()));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    Load { name: name.to_owned(), stop, counters, errors, workers, started }
}

async fn one(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
    stream: bool,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 1+1?"}]});
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client-placeholder")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    anyhow::ensure!(status == 200, "status {status}: {}", text.chars().take(300).collect::<String>());
    if stream {
        anyhow::ensure!(text.trim_end().ends_with("data: [DONE]") && text.contains("part2"), "incomplete stream: {text}");
    } else {
        anyhow::ensure!(text.contains("1+1 equals 2."), "unexpected answer: {text}");
    }
    Ok(())
}

impl Load {
    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.counters.ok.load(Ordering::Relaxed)
    }

    /// Lets at least `n` more requests complete (the load is flowing), with a deadline.
    pub async fn settle(&self, n: u64) {
        let target = self.ok() + n;
        aigw_testkit::wait_until("the load to flow", Duration::from_secs(30), || async { (self.ok() >= target).then_some(()) }).await;
    }

    /// Stops the load, waits for the requests in flight, prints the counts.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let c = &self.counters;
        let r = Report {
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            errors: self.errors.lock().unwrap().clone(),
        };
        println!(
            "load[{}]: {} requests ({} streamed, {} to vertex-ai), {} ok, {} failed in {secs:.1}s ({:.0} req/s)",
            self.name,
            r.sent,
            c.streams.load(Ordering::Relaxed),
            c.vertex.load(Ordering::Relaxed),
            r.ok,
            r.failed,
            r.sent as f64 / secs
        );
        for e in &r.errors {
            println!("load[{}]: failed: {e}", self.name);
        }
        r
    }
}

/// Asserts a finished load had no failed request (and did run).
pub fn assert_clean(r: &Report, at_least: u64) {
    assert!(r.sent >= at_least, "the load sent only {} requests (want ≥ {at_least})", r.sent);
    assert_eq!(r.failed, 0, "{} of {} requests failed: {:#?}", r.failed, r.sent, r.errors);
    assert_eq!(r.ok, r.sent);
}
