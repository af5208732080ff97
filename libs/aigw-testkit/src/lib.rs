//! Test kit for aigw: spawn the real binaries, wait without sleeps, and fake what is
//! outside our system (LLM providers) as strictly as the real thing.

pub mod bedrock;
pub mod etcd;
pub mod fake;
pub mod gcp;
pub mod http;
pub mod otlp;
pub mod proc;
pub mod redis;
pub mod relay;
pub mod tls_front;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
