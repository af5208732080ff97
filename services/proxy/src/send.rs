//! The send stage: wait for a connection permit (`keepalive_pool`), send the upstream
//! request, and wait for its response head within `timeout`. Failures are typed; each
//! becomes an attempt [`Outcome`] ([`SendError::outcome`]), from which
//! [`aigw_balance::retry::decide`] alone says whether another upstream is tried.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use aigw_balance::Outcome;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::errors::GatewayError;
use crate::upstream::Upstream;

/// An upstream response head, with what it holds until its body ends.
pub struct Sent {
    pub response: Response<Incoming>,
    /// The connection cap permit, released when the body ends.
    pub permit: OwnedSemaphorePermit,
    pub sent_at: Instant,
    /// From sending to the response head.
    pub latency: Duration,
    /// `ip:port` of the upstream connection (or the configured authority).
    pub addr: String,
}

/// Why an upstream attempt failed before any answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection permit within `timeout` (`keepalive_pool` exhausted).
    PoolTimeout(Duration),
    /// TCP connect refused.
    ConnectRefused(String),
    /// TCP connect did not finish within `timeout`.
    ConnectTimeout(String),
    /// The TLS handshake failed (certificate, protocol).
    Tls(String),
    /// Any other connect failure (DNS, unreachable network).
    Connect(String),
    /// The connection was reset or closed before a response head.
    Reset(String),
    /// No response head within `timeout`.
    Timeout(Duration),
    /// Anything else (a malformed response, a protocol error).
    Other(String),
}

impl SendError {
    /// The failure as the balancer and the retry decision see it.
    pub fn outcome(&self) -> Outcome {
        match self {
            SendError::ConnectRefused(_) | SendError::Connect(_) => Outcome::ConnectRefused,
            SendError::ConnectTimeout(_) | SendError::PoolTimeout(_) => Outcome::ConnectTimeout,
            SendError::Tls(_) => Outcome::Tls,
            SendError::Reset(_) => Outcome::Reset,
            SendError::Timeout(_) => Outcome::TimeoutBeforeFirstByte,
            SendError::Other(_) => Outcome::Malformed,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SendError::PoolTimeout(_) => "pool_timeout",
            SendError::ConnectRefused(_) => "connect_refused",
            SendError::ConnectTimeout(_) => "connect_timeout",
            SendError::Tls(_) => "tls",
            SendError::Connect(_) => "connect",
            SendError::Reset(_) => "reset",
            SendError::Timeout(_) => "timeout",
            SendError::Other(_) => "other",
        }
    }

    pub fn into_gateway_error(self) -> GatewayError {
        match self {
            SendError::PoolTimeout(d) => GatewayError::upstream(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("no upstream connection became free within {} ms (keepalive_pool)", d.as_millis()),
            ),
            SendError::Timeout(d) => GatewayError::upstream(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("upstream did not answer within {} ms", d.as_millis()),
            ),
            SendError::ConnectTimeout(m) => GatewayError::upstream(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", m),
            SendError::ConnectRefused(m) | SendError::Tls(m) | SendError::Connect(m) | SendError::Reset(m) | SendError::Other(m) => {
                GatewayError::upstream(StatusCode::BAD_GATEWAY, "upstream_unreachable", format!("cannot reach the upstream: {m}"))
            }
        }
    }
}

/// The whole cause chain as one line (names the cause without any secret).
fn chain(err: &dyn StdError) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !msg.ends_with(&s_str) {
            msg.push_str(": ");
            msg.push_str(&s_str);
        }
        src = s.source();
    }
    msg
}

/// Classifies a client error by walking its cause chain.
pub fn classify(err: &hyper_util::client::legacy::Error) -> SendError {
    let msg = chain(err);
    let mut tls = false;
    let mut io_kind = None;
    let mut incomplete = false;
    let mut src: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(s) = src {
        if s.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        // io::Error hides what it wraps from `source()`: look inside (TLS failures come
        // as io errors wrapping io errors wrapping a rustls::Error).
        let mut io = s.downcast_ref::<std::io::Error>();
        while let Some(e) = io {
            io_kind.get_or_insert(e.kind());
            let inner = e.get_ref();
            if inner.is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some()) {
                tls = true;
            }
            io = inner.and_then(|i| i.downcast_ref::<std::io::Error>());
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
        {
            incomplete = true;
        }
        src = s.source();
    }
    use std::io::ErrorKind as K;
    if err.is_connect() {
        return if tls {
            SendError::Tls(msg)
        } else {
            match io_kind {
                Some(K::ConnectionRefused) => SendError::ConnectRefused(msg),
                Some(K::TimedOut) => SendError::ConnectTimeout(msg),
                _ => SendError::Connect(msg),
            }
        };
    }
    if tls {
        return SendError::Tls(msg);
    }
    match io_kind {
        Some(K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof) => SendError::Reset(msg),
        _ if incomplete => SendError::Reset(msg),
        _ => SendError::Other(msg),
    }
}

/// `ip:port` as text, without the formatting machinery for IPv4 (a measurable share of a
/// request when done with `to_string`).
pub fn addr_text(a: std::net::SocketAddr) -> String {
    fn push_num(out: &mut String, mut n: u32) {
        let mut buf = [0u8; 10];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[i..].iter().for_each(|&b| out.push(b as char));
    }
    match a {
        std::net::SocketAddr::V4(v4) => {
            let mut out = String::with_capacity(21);
            for (k, o) in v4.ip().octets().iter().enumerate() {
                if k > 0 {
                    out.push('.');
                }
                push_num(&mut out, *o as u32);
            }
            out.push(':');
            push_num(&mut out, v4.port() as u32);
            out
        }
        v6 => v6.to_string(),
    }
}

/// Sends `req` on `up`, waiting at most `timeout` for a permit and again for the head.
pub async fn send(up: &Upstream, timeout: Duration, req: Request<Full<Bytes>>, authority: &str) -> Result<Sent, SendError> {
    let permit = tokio::time::timeout(timeout, up.permits.clone().acquire_owned())
        .await
        .map_err(|_| SendError::PoolTimeout(timeout))?
        .map_err(|_| SendError::Other("upstream client closed".into()))?;
    let sent_at = Instant::now();
    let response = match tokio::time::timeout(timeout, up.client.request(req)).await {
        Err(_) => return Err(SendError::Timeout(timeout)),
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(r)) => r,
    };
    let latency = sent_at.elapsed();
    let addr = response
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .map(|i| addr_text(i.remote_addr()))
        .unwrap_or_else(|| authority.to_owned());
    Ok(Sent { response, permit, sent_at, latency, addr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientKey, Upstreams};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn upstream(origin: &str, timeout_ms: u64) -> std::sync::Arc<Upstream> {
        Upstreams::default().get(&ClientKey {
            origin: origin.into(),
            ssl_verify: true,
            keepalive: true,
            keepalive_timeout_ms: 60_000,
            keepalive_pool: 4,
            connect_timeout_ms: timeout_ms,
        })
    }

    fn req(url: &str) -> Request<Full<Bytes>> {
        Request::post(url).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    /// A server that does `f` with every accepted connection.
    async fn server<F, Fut>(f: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(f(s));
            }
        });
        addr
    }

    /// Each failure kind, produced by a real socket, is classified; the client's status
    /// for it agrees with the outcome's.
    #[tokio::test]
    async fn failure_kinds_are_classified() {
        // Refused: a port nobody listens on.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let url = format!("http://{free}/v1");
        let e = send(&upstream(&format!("http://{free}"), 1000), Duration::from_secs(2), req(&url), "h").await.err().unwrap();
        assert!(matches!(e, SendError::ConnectRefused(_)), "{e:?}");
        // Reset: the server reads the request and closes without answering.
        let addr = server(|mut s| async move {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            drop(s);
        })
        .await;
        let e = send(&upstream(&format!("http://{addr}"), 1000), Duration::from_secs(2), req(&format!("http://{addr}/v1")), "h")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SendError::Reset(_)), "{e:?}");
        // TLS: an https origin that speaks plain text.
        let addr = server(|mut s| async move {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        })
        .await;
        let e = send(&upstream(&format!("https://{addr}"), 1000), Duration::from_secs(2), req(&format!("https://{addr}/v1")), "h")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SendError::Tls(_)), "{e:?}");
        // Timeout before the first byte: the server accepts and never answers.
        let addr = server(|s| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
        .await;
        let e = send(&upstream(&format!("http://{addr}"), 1000), Duration::from_millis(100), req(&format!("http://{addr}/v1")), "h")
            .await
            .err()
            .unwrap();
        assert_eq!(e, SendError::Timeout(Duration::from_millis(100)));
        assert_eq!(SendError::Timeout(Duration::ZERO).into_gateway_error().status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(SendError::ConnectRefused(String::new()).into_gateway_error().status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn addresses_as_text() {
        for a in ["127.0.0.1:8080", "0.0.0.0:0", "255.255.255.255:65535", "10.2.30.4:443", "[::1]:9000"] {
            assert_eq!(addr_text(a.parse().unwrap()), a);
        }
    }
}
