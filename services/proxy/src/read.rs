//! The read stage: the client's body read under a bound (the largest `max_req_body_size`
//! of the routes that could match, `Content-Length` checked first) and a per-read timeout
//! (`--client-body-timeout`), then parsed once (JSON, or a form for `vars`).
//!
//! [`collect_bounded`] is the one place in the proxy that reads a whole body; clippy's
//! `disallowed-methods` (services/proxy/clippy.toml) keeps `BodyExt::collect` out of
//! everything else.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::errors::GatewayError;

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectError {
    /// More than the limit arrived.
    TooLarge,
    /// No data for longer than the per-read timeout.
    Timeout,
    /// The body failed (connection reset, protocol error).
    Body(String),
}

/// Reads a whole body: at most `limit` bytes, each read within `per_read`. Frames are
/// kept as they arrive (no copy, no growing buffer that reallocates) and joined once at the
/// end with an exact capacity; a body that arrives in one frame is returned as is. So the
/// memory a body takes is its size (plus one copy when it is complete), and a body over the
/// limit costs at most the limit before it is dropped.
pub async fn collect_bounded<B>(mut body: B, limit: u64, per_read: Duration) -> Result<Bytes, CollectError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(per_read, body.frame()).await {
            Err(_) => return Err(CollectError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(CollectError::Body(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit {
            return Err(CollectError::TooLarge);
        }
        if !data.is_empty() {
            frames.push(data);
        }
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(total as usize);
            frames.iter().for_each(|f| b.extend_from_slice(f));
            b.freeze()
        }
    })
}

/// The client's body, read and parsed.
pub struct ClientBody {
    pub bytes: Bytes,
    pub content_type: String,
    pub is_json: bool,
    /// The JSON body, validated, its tree parsed only when a stage needs it (None: not
    /// JSON, empty, or invalid).
    pub json: Option<aigw_llm::body::RawBody>,
    /// A form body, for `post_arg.*` in `vars`.
    pub form: Option<Value>,
}

/// Reads the client's body under `limit` and `per_read`.
pub async fn read_body(
    parts: &http::request::Parts,
    body: hyper::body::Incoming,
    limit: u64,
    per_read: Duration,
) -> Result<ClientBody, GatewayError> {
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(GatewayError::too_large(len, limit));
    }
    let bytes = match collect_bounded(body, limit, per_read).await {
        Ok(b) => b,
        Err(CollectError::TooLarge) => return Err(GatewayError::too_large(limit + 1, limit)),
        Err(CollectError::Timeout) => return Err(GatewayError::client_timeout(per_read)),
        Err(CollectError::Body(e)) => return Err(GatewayError::bad_request(format!("could not read the request body: {e}"))),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_owned();
    let is_json = content_type.len() >= 16 && content_type.as_bytes()[..16].eq_ignore_ascii_case(b"application/json");
    let json = if is_json && !bytes.is_empty() { aigw_llm::body::RawBody::parse(bytes.clone()).ok() } else { None };
    let form = content_type.starts_with("application/x-www-form-urlencoded").then(|| {
        let text = String::from_utf8_lossy(&bytes);
        Value::Object(
            text.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (aigw_providers::target::decode_component(k), Value::String(aigw_providers::target::decode_component(v))))
                .collect(),
        )
    });
    Ok(ClientBody { bytes, content_type, is_json, json, form })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, String>>>;

    fn chunks(parts: Vec<&'static [u8]>) -> StreamBody<Frames> {
        let frames: Vec<Result<http_body::Frame<Bytes>, String>> =
            parts.into_iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bounded_collection() {
        let t = Duration::from_secs(1);
        let one = Bytes::from_static(b"{\"a\":1}");
        let got = collect_bounded(Full::new(one.clone()).map_err(|n| match n {}), 100, t).await.unwrap();
        assert_eq!(got, one);
        assert_eq!(got.as_ptr(), one.as_ptr(), "one frame: no copy");
        assert_eq!(collect_bounded(chunks(vec![b"ab", b"cd", b"e"]), 5, t).await.unwrap(), Bytes::from_static(b"abcde"));
        assert_eq!(collect_bounded(chunks(vec![b"ab", b"cd", b"ef"]), 5, t).await, Err(CollectError::TooLarge));
        assert_eq!(collect_bounded(chunks(vec![]), 5, t).await.unwrap(), Bytes::new());
        let failing = StreamBody::new(futures_util::stream::iter(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"x"))),
            Err("reset by peer".to_owned()),
        ]));
        assert_eq!(collect_bounded(failing, 5, t).await, Err(CollectError::Body("reset by peer".into())));
        let stalled = StreamBody::new(futures_util::stream::pending::<Result<http_body::Frame<Bytes>, String>>());
        assert_eq!(collect_bounded(stalled, 5, Duration::from_millis(20)).await, Err(CollectError::Timeout));
    }
}
