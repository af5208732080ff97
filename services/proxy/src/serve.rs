//! The accept loop: HTTP/1.1 and h2c on one port, with nginx's client limits
//! (`--client-header-timeout` for HTTP/1 request heads; the body timeout is the read
//! stage's), and a drain on stop that loses no request a client has sent.
//!
//! The drain (ARCHITECTURE.md, "Stopping"):
//! 1. the listener stops accepting, but first every connection the kernel has already
//!    completed (its accept queue) is taken and served: a client whose connect succeeded
//!    is never reset by the close;
//! 2. no connection is closed before its first request was read: a connection accepted but
//!    still silent when the stop came gets up to `min(--client-header-timeout, 10 s)` to
//!    send it. Once a connection has started a request it is shut gracefully: the request
//!    in flight is finished and answered (`Connection: close` on HTTP/1, GOAWAY on h2),
//!    an idle keep-alive connection is closed at once;
//! 3. the stop waits for every connection, capped at 30 s.
//!
//! What is left: a connection whose handshake completes between the last `accept` and the
//! close (microseconds), or whose client ACK arrives after the close (about one round
//! trip), is reset; and an HTTP/1 keep-alive connection that is idle at the stop is closed
//! at once, as any server does, so a pooling client may see that race. A load balancer
//! that opens one connection per request (deploy/nginx) otherwise only sees refused
//! connects, which are always safe to retry elsewhere. A stop before the first config
//! (init gating, lib.rs) drops the listener without serving the queue: nothing could be
//! answered but 503.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

use crate::state::{ClientLimits, ProxyBody};

/// How long the drain waits in all.
const DRAIN_CAP: Duration = Duration::from_secs(30);
/// How long accepting the queue is retried after errors other than "empty".
const QUEUE_RETRY_CAP: Duration = Duration::from_secs(1);
/// The longest a silent connection accepted before the stop is waited for.
const FIRST_REQUEST_GRACE_CAP: Duration = Duration::from_secs(10);

pub async fn wait_stop(rx: &mut watch::Receiver<bool>) {
    // The guard returned by wait_for is not Send: drop it before any await.
    let stopped = rx.wait_for(|s| *s).await.is_ok();
    if !stopped {
        std::future::pending::<()>().await;
    }
}

/// Serves `listener` until stopped, then drains (module docs).
pub async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, limits: ClientLimits, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // Every connection task holds a sender; the drain waits until all are dropped.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let conns = Conns { builder, stop: stop.clone(), grace: limits.header_timeout.min(FIRST_REQUEST_GRACE_CAP), alive };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => conns.spawn(stream, remote, handler.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = wait_stop(&mut stop) => break,
        }
    }
    // (1) Take what the kernel has already accepted. Plain syscalls until EAGAIN: tokio's
    // accept only tries the syscall when its readiness says so.
    let mut queued = 0usize;
    match listener.into_std() {
        Ok(std_listener) => {
            // Out of descriptors or buffers (likeliest under load, when the queue is full):
            // retry for a while rather than reset the rest of the queue.
            let give_up = std::time::Instant::now() + QUEUE_RETRY_CAP;
            loop {
                match std_listener.accept() {
                    Ok((s, remote)) => match s.set_nonblocking(true).and_then(|()| TcpStream::from_std(s)) {
                        Ok(stream) => {
                            queued += 1;
                            conns.spawn(stream, remote, handler.clone());
                        }
                        Err(e) => tracing::warn!(error = %e, "a queued connection could not be served"),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted) => {}
                    Err(e) if std::time::Instant::now() < give_up => {
                        tracing::warn!(error = %e, "accepting a queued connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the rest of the accept queue is reset");
                        break;
                    }
                }
            }
            drop(std_listener);
        }
        Err(e) => tracing::warn!(error = %e, "the accept queue could not be drained"),
    }
    if queued > 0 {
        tracing::debug!(queued, "serving connections accepted by the kernel before the stop");
    }
    // (3) Wait for every connection, capped.
    drop(conns);
    if tokio::time::timeout(DRAIN_CAP, all_closed.recv()).await.is_err() {
        tracing::warn!("drain timeout: closing remaining connections");
    }
}

struct Conns {
    builder: auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    alive: mpsc::Sender<()>,
}

impl Conns {
    fn spawn<F, Fut>(&self, stream: TcpStream, remote: SocketAddr, handler: F)
    where
        F: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<hyper::Response<ProxyBody>, std::convert::Infallible>> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        // A permit is stored by the first request (and kept by later ones): (2) waits for it.
        let started = Arc::new(Notify::new());
        let seen = started.clone();
        let svc = service_fn(move |req| {
            seen.notify_one();
            handler(req, remote)
        });
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let (mut stop, grace, alive) = (self.stop.clone(), self.grace, self.alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let mut conn = std::pin::pin!(conn);
            let stopping = async {
                wait_stop(&mut stop).await;
                let _ = tokio::time::timeout(grace, started.notified()).await;
            };
            let done = tokio::select! {
                biased;
                r = conn.as_mut() => Some(r),
                _ = stopping => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
