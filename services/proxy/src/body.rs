//! The response body wrapper: forwards each upstream frame the moment it arrives and
//! observes it on the side (usage, model, tool calls, time to first token). It enforces
//! the per-read `timeout`, `max_stream_duration_ms` and `max_response_bytes`, and never
//! ends a stream silently truncated: a stream that breaks, stalls, hits a limit or ends
//! without its end marker gets a terminal error event in the client's protocol.
//! With a converter (Anthropic client, OpenAI backend) each upstream SSE event is parsed
//! once, observed, and converted; converted events go out as soon as they exist.
//! Dropping it (client gone) drops the upstream body, which closes that connection at once.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aigw_llm::stream::Pipe;
use aigw_llm::usage::{Observation, observe_json};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::proxy::BoxError;

/// How a response ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    ClientGone,
    UpstreamError(String),
    ReadTimeout,
    DurationLimit,
    BytesLimit,
    /// The stream ended without its protocol's end marker.
    Truncated,
}

/// Handed to the completion hook once per response.
#[derive(Debug)]
pub struct Summary {
    pub obs: Observation,
    pub outcome: Outcome,
    /// From sending the upstream request to its first body byte.
    pub ttft: Option<Duration>,
    /// From sending the upstream request to the end of its body.
    pub upstream_time: Duration,
    pub bytes: u64,
    /// Bytes the client was sent (forwarded or converted, plus any terminal event).
    pub client_bytes: u64,
    pub stream: bool,
}

pub type OnDone = Box<dyn FnOnce(Summary) + Send>;

enum Mode {
    Stream(Box<Pipe>),
    /// Non-streamed JSON kept (up to a cap) for usage extraction at the end.
    Json(Vec<u8>),
}

/// Non-stream bodies larger than this are forwarded but not parsed for usage.
const JSON_KEEP_CAP: usize = 8 << 20;

pub struct Limits {
    pub read_timeout: Duration,
    pub max_duration: Option<Duration>,
    pub max_bytes: Option<u64>,
}

pub struct ObservedBody {
    inner: Incoming,
    mode: Mode,
    read_timeout: Duration,
    read_sleep: Pin<Box<Sleep>>,
    deadline: Option<Pin<Box<Sleep>>>,
    max_bytes: Option<u64>,
    bytes: u64,
    forwarded: u64,
    started: Instant,
    ttft: Option<Duration>,
    finished: bool,
    on_done: Option<OnDone>,
    /// Held until the body ends: the config snapshot and the connection permit.
    _hold: Box<dyn Send>,
}

impl ObservedBody {
    /// `pipe` is Some for a streamed response (SSE or event-stream), None for a plain body.
    pub fn new(inner: Incoming, pipe: Option<Pipe>, limits: Limits, started: Instant, hold: Box<dyn Send>, on_done: OnDone) -> Self {
        let stream = pipe.is_some();
        let mode = match pipe {
            Some(p) => Mode::Stream(Box::new(p)),
            None => Mode::Json(Vec::new()),
        };
        let deadline = if stream { limits.max_duration.map(|d| Box::pin(tokio::time::sleep_until((started + d).into()))) } else { None };
        ObservedBody {
            inner,
            mode,
            read_timeout: limits.read_timeout,
            read_sleep: Box::pin(tokio::time::sleep(limits.read_timeout)),
            deadline,
            max_bytes: limits.max_bytes,
            bytes: 0,
            forwarded: 0,
            started,
            ttft: None,
            finished: false,
            on_done: Some(on_done),
            _hold: hold,
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Stream(_))
    }

    fn complete(&mut self, outcome: Outcome, tail: u64) {
        self.finished = true;
        let obs = match &mut self.mode {
            Mode::Stream(p) => p.obs().clone(),
            Mode::Json(buf) => {
                let o = observe_json(buf);
                buf.clear();
                o
            }
        };
        if let Some(f) = self.on_done.take() {
            let stream = self.is_stream();
            let client_bytes = self.forwarded + tail;
            f(Summary { obs, outcome, ttft: self.ttft, upstream_time: self.started.elapsed(), bytes: self.bytes, client_bytes, stream });
        }
    }

    /// Ends the response early. A stream gets a terminal error event in the client's
    /// protocol; a plain body can only be cut (its status and length are already sent).
    fn abort(&mut self, outcome: Outcome, code: &str, message: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Mode::Stream(p) = &mut self.mode
            && p.obs().done
            && matches!(outcome, Outcome::ReadTimeout | Outcome::UpstreamError(_))
        {
            // The protocol's end marker already went out: the answer is whole.
            tracing::debug!("upstream lingered after the end of the stream: {message}");
            let tail = Bytes::from(p.finish());
            self.complete(Outcome::Complete, tail.len() as u64);
            return if tail.is_empty() { Poll::Ready(None) } else { Poll::Ready(Some(Ok(Frame::data(tail)))) };
        }
        tracing::warn!(outcome = ?outcome, bytes = self.bytes, duration_ms = self.started.elapsed().as_millis() as u64, "aborting upstream response: {message}");
        let Mode::Stream(p) = &mut self.mode else {
            self.complete(outcome, 0);
            return Poll::Ready(Some(Err(message.into())));
        };
        let status = if outcome == Outcome::ReadTimeout { 504 } else { 502 };
        let ev = Bytes::from(p.fail(status, code, &message));
        self.complete(outcome, ev.len() as u64);
        if ev.is_empty() { Poll::Ready(None) } else { Poll::Ready(Some(Ok(Frame::data(ev)))) }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return this.abort(Outcome::DurationLimit, "max_stream_duration_exceeded", "max_stream_duration_ms exceeded".into());
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(data) = frame.data_ref() else { return Poll::Ready(Some(Ok(frame))) };
                    if this.ttft.is_none() {
                        this.ttft = Some(this.started.elapsed());
                    }
                    this.bytes += data.len() as u64;
                    if let Some(max) = this.max_bytes
                        && this.bytes > max
                    {
                        return this.abort(Outcome::BytesLimit, "max_response_bytes_exceeded", "max_response_bytes exceeded".into());
                    }
                    let next = tokio::time::Instant::now() + this.read_timeout;
                    this.read_sleep.as_mut().reset(next);
                    let out = match &mut this.mode {
                        Mode::Stream(p) => match p.push(data) {
                            None => frame,
                            Some(converted) if converted.is_empty() => continue, // nothing to send yet: read on
                            Some(converted) => Frame::data(Bytes::from(converted)),
                        },
                        Mode::Json(buf) => {
                            if buf.len() + data.len() <= JSON_KEEP_CAP {
                                buf.extend_from_slice(data);
                            }
                            frame
                        }
                    };
                    this.forwarded += out.data_ref().map_or(0, |d| d.len() as u64);
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.abort(
                        Outcome::UpstreamError(e.to_string()),
                        "upstream_stream_error",
                        format!("upstream stream failed: {e}"),
                    );
                }
                Poll::Ready(None) => {
                    let (tail, missing_end) = match &mut this.mode {
                        // A converting pipe closes a stream that lacked its end marker properly.
                        Mode::Stream(p) => (Bytes::from(p.finish()), p.missing_end() && p.expects_end_marker()),
                        Mode::Json(_) => (Bytes::new(), false),
                    };
                    if !tail.is_empty() {
                        this.complete(Outcome::Complete, tail.len() as u64);
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    if missing_end {
                        return this.abort(
                            Outcome::Truncated,
                            "upstream_stream_truncated",
                            "upstream stream ended before its end marker".into(),
                        );
                    }
                    this.complete(Outcome::Complete, 0);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.read_sleep.as_mut().poll(cx).is_ready() {
                        let ms = this.read_timeout.as_millis();
                        return this.abort(Outcome::ReadTimeout, "upstream_timeout", format!("no data from the upstream for {ms} ms"));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_stream() { SizeHint::default() } else { self.inner.size_hint() }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(bytes = self.bytes, "client disconnected; upstream read aborted");
            self.complete(Outcome::ClientGone, 0);
        }
    }
}
