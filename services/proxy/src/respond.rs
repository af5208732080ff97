//! The respond stage: one body type, [`AnswerBody`], for every answer the client gets.
//!
//! * **Whole** answers (not streamed, and every gateway-made error) are read under a cap
//!   (`max_response_bytes`, else 64 MiB, with or without `Content-Length`; past it, a 502
//!   in the client's protocol), observed once for usage, converted when the client speaks
//!   another protocol, and sent with an exact `Content-Length`.
//! * **Streamed** answers (SSE, AWS event-stream) go through an `aigw_llm::stream::Pipe`:
//!   whole events are forwarded the moment they are complete (untouched when no
//!   conversion is needed), usage is read beside them, and the per-read `timeout`,
//!   `max_stream_duration_ms` and `max_response_bytes` apply. A stream never ends
//!   silently truncated: a failure, a stall, a limit or a missing end marker ends it with
//!   one terminal error in the client's protocol, after the last whole event.
//!
//! The body hands the request's completion record to the sinks when it ends, or when it
//! is dropped (the client went away: dropping the upstream body closes that connection).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aigw_llm::stream::{Ending, Pipe, Step};
use aigw_llm::usage::observe_json;
use aigw_providers::plan::Plan;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::compiled::CompiledRoute;
use crate::complete::Completion;
use crate::errors::GatewayError;
use crate::read::{CollectError, collect_bounded};
use crate::record::{Outcome, Record};
use crate::send::Sent;
use crate::state::BoxError;

/// Response headers that belong to one connection, never passed on (built once: removing
/// by `&str` parses the name every time).
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// An upstream answer ready to go to the client.
pub struct Answer {
    pub parts: http::response::Parts,
    pub payload: Payload,
    /// Held until the body ends (the connection cap permit).
    pub hold: Box<dyn Send>,
}

pub enum Payload {
    Whole(Bytes),
    Stream(Box<StreamState>),
}

/// Reads or prepares the answer to `sent` for the client of `plan`.
pub async fn respond(sent: Sent, plan: &Plan, route: &CompiledRoute, rec: &mut Record) -> Result<Answer, GatewayError> {
    let Sent { response, permit, sent_at, latency, addr } = sent;
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    rec.upstream_addr = addr;
    rec.upstream_status = Some(status.as_u16());
    tracing::debug!(request_id = %rec.request_id, route = %rec.route_id, status = status.as_u16(), "upstream responded");
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.insert(HeaderName::from_static("x-aigw-upstream-latency-ms"), HeaderValue::from(latency.as_millis() as u64));
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let is_stream = content_type.contains("text/event-stream") || content_type.contains("application/vnd.amazon.eventstream");
    let ap = &route.spec.ai_proxy;

    if is_stream {
        let streaming = status.is_success();
        let client = if streaming { plan.client } else { plan.target };
        let model = plan.model.as_deref().unwrap_or_default();
        let mut pipe = Pipe::new(plan.target, client, plan.names.clone(), model, &rec.request_id, route.max_event, plan.include_usage);
        let needs = route.needs;
        if let Some(cap) = needs.response_text {
            pipe.obs_mut().collect_text(cap);
        }
        if pipe.converting() {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        }
        let state = StreamState::new(
            body,
            pipe,
            route.timeout,
            ap.max_stream_duration_ms.map(Duration::from_millis),
            ap.max_response_bytes,
            sent_at,
            needs.response_body,
        );
        return Ok(Answer { parts, payload: Payload::Stream(Box::new(state)), hold: Box::new(permit) });
    }

    // A whole answer: read under the cap, whatever Content-Length says.
    let cap = route.response_cap;
    let too_large = |n: String| {
        GatewayError::bad_gateway(
            "upstream_response_too_large",
            format!("the upstream answer is larger than max_response_bytes ({cap} bytes){n}"),
        )
    };
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > cap
    {
        return Err(too_large(format!(": Content-Length {len}")));
    }
    let bytes = match collect_bounded(body, cap, route.timeout).await {
        Ok(b) => b,
        Err(CollectError::TooLarge) => return Err(too_large(String::new())),
        Err(CollectError::Timeout) => {
            return Err(GatewayError::upstream(
                http::StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("no data from the upstream for {} ms", route.timeout.as_millis()),
            ));
        }
        Err(CollectError::Body(e)) => {
            return Err(GatewayError::bad_gateway("upstream_body_error", format!("reading the upstream answer failed: {e}")));
        }
    };
    drop(permit);
    rec.ttft = Some(latency);
    rec.upstream_time = Some(sent_at.elapsed());
    rec.observe(&observe_json(&bytes));
    rec.observe_body(&bytes);
    let amzn = parts.headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let out = match aigw_providers::answer::convert(plan, status.as_u16(), amzn.as_deref(), &bytes, &rec.request_id) {
        None => bytes,
        Some(Ok(converted)) => {
            // Vertex :predict carries its token counts in another shape: read the usage
            // from the OpenAI answer made of it.
            if plan.target == aigw_llm::protocol::Protocol::VertexPredict {
                rec.usage = observe_json(&converted).usage;
            }
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts.headers.remove("x-amzn-errortype");
            Bytes::from(converted)
        }
        Some(Err(e)) => return Err(GatewayError::bad_gateway("upstream_answer_invalid", e.0)),
    };
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Answer { parts, payload: Payload::Whole(out), hold: Box::new(()) })
}

/// A streamed answer in flight.
pub struct StreamState {
    inner: Incoming,
    pipe: Pipe,
    read_timeout: Duration,
    read_sleep: Pin<Box<Sleep>>,
    deadline: Option<Pin<Box<Sleep>>>,
    max_bytes: Option<u64>,
    bytes: u64,
    forwarded: u64,
    started: Instant,
    ttft: Option<Duration>,
    /// `http-logger.include_resp_body`: what the client was sent, up to the cap.
    copy: Option<(BytesMut, usize)>,
}

impl StreamState {
    fn new(
        inner: Incoming,
        pipe: Pipe,
        read_timeout: Duration,
        max_duration: Option<Duration>,
        max_bytes: Option<u64>,
        started: Instant,
        copy_cap: Option<usize>,
    ) -> Self {
        StreamState {
            inner,
            pipe,
            read_timeout,
            read_sleep: Box::pin(tokio::time::sleep(read_timeout)),
            deadline: max_duration.map(|d| Box::pin(tokio::time::sleep_until((started + d).into()))),
            max_bytes,
            bytes: 0,
            forwarded: 0,
            started,
            ttft: None,
            copy: copy_cap.map(|cap| (BytesMut::new(), cap)),
        }
    }
}

impl StreamState {
    fn keep_copy(&mut self, sent: &[u8]) {
        if let Some((copy, cap)) = &mut self.copy {
            let room = cap.saturating_sub(copy.len());
            copy.extend_from_slice(&sent[..sent.len().min(room)]);
        }
    }
}

enum Inner {
    Whole(Option<Bytes>),
    Stream(Box<StreamState>),
    Done,
}

/// The response body of every answer: see the module docs.
pub struct AnswerBody {
    inner: Inner,
    len: u64,
    completion: Option<Completion>,
    /// The config snapshot and connection permit, held until the body ends.
    _hold: Box<dyn Send>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl AnswerBody {
    pub fn whole(bytes: Bytes, completion: Completion, hold: Box<dyn Send>) -> AnswerBody {
        AnswerBody { len: bytes.len() as u64, inner: Inner::Whole(Some(bytes)), completion: Some(completion), _hold: hold }
    }

    pub fn stream(state: Box<StreamState>, completion: Completion, hold: Box<dyn Send>) -> AnswerBody {
        AnswerBody { len: 0, inner: Inner::Stream(state), completion: Some(completion), _hold: hold }
    }

    /// Hands the record over; `tail` is the stream's last frame, about to be sent.
    fn finish(&mut self, outcome: Outcome, tail: &[u8]) {
        let Some(mut c) = self.completion.take() else { return };
        let sent = match &mut self.inner {
            Inner::Stream(s) => {
                s.keep_copy(tail);
                let r = c.record_mut();
                r.observe(s.pipe.obs());
                r.ttft = s.ttft;
                r.upstream_time = Some(s.started.elapsed());
                if let Some((copy, _)) = s.copy.take() {
                    r.response_body = Some(copy.freeze());
                }
                s.forwarded + tail.len() as u64
            }
            Inner::Whole(rest) => {
                if rest.is_some() {
                    0
                } else {
                    self.len
                }
            }
            Inner::Done => self.len,
        };
        c.finish(outcome, sent);
        // Dropping the upstream body now closes that connection at once.
        self.inner = Inner::Done;
    }

    /// Ends a stream early: a terminal error event in the client's protocol, unless the
    /// protocol's end marker already went out (an upstream that lingers after the end).
    fn abort(&mut self, outcome: Outcome, status: u16, code: &str, message: String) -> Polled {
        let Inner::Stream(s) = &mut self.inner else { return Poll::Ready(None) };
        if s.pipe.obs().done && matches!(outcome, Outcome::ReadTimeout | Outcome::UpstreamError(_)) {
            tracing::debug!("upstream lingered after the end of the stream: {message}");
            let (tail, _) = s.pipe.finish();
            self.finish(Outcome::Complete, &tail);
            return if tail.is_empty() { Poll::Ready(None) } else { Poll::Ready(Some(Ok(Frame::data(tail)))) };
        }
        tracing::warn!(
            outcome = ?outcome, bytes = s.bytes, duration_ms = s.started.elapsed().as_millis() as u64,
            "aborting upstream response: {message}"
        );
        let ev = Bytes::from(s.pipe.fail(status, code, &message));
        self.finish(outcome, &ev);
        if ev.is_empty() { Poll::Ready(None) } else { Poll::Ready(Some(Ok(Frame::data(ev)))) }
    }
}

fn outcome_of(e: Ending) -> Outcome {
    match e {
        Ending::Complete => Outcome::Complete,
        Ending::Truncated => Outcome::Truncated,
        Ending::UpstreamError(m) => Outcome::UpstreamError(m),
        Ending::Corrupt(m) => Outcome::Corrupt(m),
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let s = match &mut this.inner {
            Inner::Done => return Poll::Ready(None),
            Inner::Whole(data) => {
                return match data.take() {
                    Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    None => {
                        this.finish(Outcome::Complete, &[]);
                        Poll::Ready(None)
                    }
                };
            }
            Inner::Stream(s) => s,
        };
        if let Some(d) = &mut s.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            return this.abort(Outcome::DurationLimit, 502, "max_stream_duration_exceeded", "max_stream_duration_ms exceeded".into());
        }
        loop {
            let Inner::Stream(s) = &mut this.inner else { return Poll::Ready(None) };
            match Pin::new(&mut s.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(d) => d,
                        Err(_) => continue, // upstream trailers are not forwarded
                    };
                    if s.ttft.is_none() {
                        s.ttft = Some(s.started.elapsed());
                    }
                    s.bytes += data.len() as u64;
                    if let Some(max) = s.max_bytes
                        && s.bytes > max
                    {
                        return this.abort(Outcome::BytesLimit, 502, "max_response_bytes_exceeded", "max_response_bytes exceeded".into());
                    }
                    let next = tokio::time::Instant::now() + s.read_timeout;
                    s.read_sleep.as_mut().reset(next);
                    match s.pipe.push(data) {
                        Step::Hold => continue,
                        Step::Send(b) => {
                            s.forwarded += b.len() as u64;
                            s.keep_copy(&b);
                            return Poll::Ready(Some(Ok(Frame::data(b))));
                        }
                        Step::End(b, ending) => {
                            tracing::warn!(ending = ?ending, bytes = s.bytes, "ending a broken upstream stream");
                            this.finish(outcome_of(ending), &b);
                            return Poll::Ready(Some(Ok(Frame::data(b))));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.abort(
                        Outcome::UpstreamError(e.to_string()),
                        502,
                        "upstream_stream_error",
                        format!("upstream stream failed: {e}"),
                    );
                }
                Poll::Ready(None) => {
                    let (tail, ending) = s.pipe.finish();
                    if ending == Ending::Truncated {
                        tracing::warn!(bytes = s.bytes, "upstream stream ended before its end marker");
                    }
                    this.finish(outcome_of(ending), &tail);
                    return if tail.is_empty() { Poll::Ready(None) } else { Poll::Ready(Some(Ok(Frame::data(tail)))) };
                }
                Poll::Pending => {
                    if s.read_sleep.as_mut().poll(cx).is_ready() {
                        let ms = s.read_timeout.as_millis();
                        return this.abort(Outcome::ReadTimeout, 504, "upstream_timeout", format!("no data from the upstream for {ms} ms"));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(d) => d.is_none(),
            Inner::Stream(_) => false,
            Inner::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(_) => SizeHint::with_exact(self.len),
            Inner::Stream(_) => SizeHint::default(),
            Inner::Done => SizeHint::with_exact(0),
        }
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        if self.completion.is_some() {
            // A whole body whose data went out is complete (hyper stops polling once
            // Content-Length bytes are written); anything else: the client went away.
            let outcome = match &self.inner {
                Inner::Whole(None) => Outcome::Complete,
                _ => Outcome::ClientGone,
            };
            self.finish(outcome, &[]);
        }
    }
}
