//! aigw-proxy: a stateless LLM gateway node. It takes its routes from a file
//! (standalone) or from aigw-config, and runs the provider pipeline.

pub mod access_log;
pub mod body;
pub mod errors;
pub mod forward;
pub mod proxy;
pub mod reqvars;
pub mod router;
pub mod runtime;
pub mod sigv4;
pub mod sources;
pub mod status;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aigw_model::secrets::DataKey;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub enum Source {
    /// Standalone: a routes file, watched.
    File(PathBuf),
    /// Subscribed to aigw-config.
    Xds(Box<sources::XdsSource>),
}

pub struct Config {
    pub source: Source,
    pub data_key: Option<DataKey>,
    pub access_log: access_log::AccessLog,
}

/// Runs the node until `shutdown` resolves, then drains in-flight requests (30 s at most).
/// In file mode the first load must succeed: its error is returned.
pub async fn run(
    cfg: Config,
    data: TcpListener,
    status: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = proxy::AppState::new(cfg.access_log);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let stop_signal = async move { wait_stop(&mut stopped).await };
    match cfg.source {
        Source::File(path) => {
            let first = std::fs::read(&path).unwrap_or_default();
            let compiled = sources::load_file(&path, cfg.data_key.as_ref(), &state.upstreams).map_err(|e| anyhow::anyhow!(e))?;
            state.apply(compiled);
            tokio::spawn(sources::watch_file(path, cfg.data_key, state.clone(), first));
        }
        Source::Xds(src) => {
            tokio::spawn(sources::run_xds(*src, state.clone(), stop_signal));
        }
    }
    tracing::info!(kind = "data", addr = %data.local_addr()?, "listening");
    tracing::info!(kind = "status", addr = %status.local_addr()?, "listening");

    let st = state.clone();
    let status_task = tokio::spawn(serve(status, stop_rx.clone(), move |req, _| status::handle(st.clone(), req)));
    let st = state.clone();
    let data_task = tokio::spawn(serve(data, stop_rx, move |req, remote| proxy::handle(st.clone(), req, remote)));
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = data_task.await;
    let _ = status_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_stop(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard returned by wait_for is not Send: drop it before any await.
    let stopped = rx.wait_for(|s| *s).await.is_ok();
    if !stopped {
        std::future::pending::<()>().await;
    }
}

/// Accept loop serving HTTP/1.1 and h2c; on stop, finishes open connections (30 s cap).
async fn serve<F, Fut>(listener: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<proxy::ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| h(req, remote));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = wait_stop(&mut stop) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("drain timeout: closing remaining connections"),
    }
}
