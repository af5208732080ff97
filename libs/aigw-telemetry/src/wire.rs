//! OTLP trace protobuf written straight from plain data, in one pass.
//!
//! Building `opentelemetry_proto` structs and letting prost encode them cost more than
//! the request itself in the exporter's profile: every attribute was three allocations
//! (key, value, `KeyValue`), and prost computes the length of each nested message again
//! at every level above it. Here a span is written field by field into a scratch buffer;
//! an attribute's length is known from its key and value alone (`KeyValue` and
//! `AnyValue` are one level deep), so nothing is measured twice and nothing is
//! allocated per attribute. A batch is the encoded `ExportTraceServiceRequest` itself:
//! the spans are appended as they come, and the few wrapper bytes (resource, scope,
//! lengths) are written in front of them when the batch is sent.
//!
//! The encoding is plain proto3 (canonical varints; a span's header fields, `flags` (16)
//! included, before its attributes; empty fields omitted but an empty attribute key); the
//! unit tests decode it with prost, compare it field by field with what the generated types
//! would hold, and require the length of prost's own encoding.

use std::time::SystemTime;

use bytes::Bytes;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(buf, u64::from(field << 3 | wire));
}

#[inline]
fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// The encoded size of a length-delimited field whose body is `n` bytes.
#[inline]
fn len_field_len(field: u32, n: usize) -> usize {
    tag_len(field) + varint_len(n as u64) + n
}

#[inline]
fn put_len_prefix(buf: &mut Vec<u8>, field: u32, n: usize) {
    put_tag(buf, field, LEN);
    put_varint(buf, n as u64);
}

#[inline]
fn put_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_len_prefix(buf, field, b.len());
    buf.extend_from_slice(b);
}

#[inline]
fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, VARINT);
    put_varint(buf, v);
}

/// An attribute value (`AnyValue`).
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Strs(&'a [&'a str]),
}

// AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4,
// array_value = 5 (ArrayValue: values = 1).
#[inline]
fn any_len(v: &Value) -> usize {
    match *v {
        Value::Str(s) => len_field_len(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(i as u64),
        Value::Double(_) => 9,
        Value::Strs(list) => len_field_len(5, array_len(list)),
    }
}

fn array_len(list: &[&str]) -> usize {
    list.iter().map(|s| len_field_len(1, len_field_len(1, s.len()))).sum()
}

#[inline]
fn put_any(buf: &mut Vec<u8>, v: &Value) {
    match *v {
        Value::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Bool(b) => put_varint_field(buf, 2, u64::from(b)),
        Value::Int(i) => put_varint_field(buf, 3, i as u64),
        Value::Double(d) => put_fixed64(buf, 4, d.to_bits()),
        Value::Strs(list) => {
            put_len_prefix(buf, 5, array_len(list));
            for s in list {
                put_len_prefix(buf, 1, len_field_len(1, s.len()));
                put_bytes(buf, 1, s.as_bytes());
            }
        }
    }
}

// KeyValue: key = 1, value = 2.
#[inline]
fn kv_len(key: &str, v: &Value) -> usize {
    len_field_len(1, key.len()) + len_field_len(2, any_len(v))
}

/// Writes a `KeyValue` as field `field` of the enclosing message.
#[inline]
fn put_kv(buf: &mut Vec<u8>, field: u32, key: &str, v: &Value) {
    // The common case, a short attribute: every length is one byte (key < 64 and string
    // < 58 bytes keep the KeyValue under 128), so no varint length is computed and the
    // bytes around the key and the value are written as fixed groups.
    if field < 16 && key.len() < 64 {
        let tag = (field << 3 | LEN) as u8;
        match *v {
            Value::Str(s) if s.len() < 58 => {
                let any = 2 + s.len();
                let kv = 2 + key.len() + 2 + any;
                buf.reserve(2 + kv);
                buf.extend_from_slice(&[tag, kv as u8, 0x0a, key.len() as u8]);
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(&[0x12, any as u8, 0x0a, s.len() as u8]);
                buf.extend_from_slice(s.as_bytes());
                return;
            }
            Value::Int(i) => {
                let any = 1 + varint_len(i as u64);
                let kv = 2 + key.len() + 2 + any;
                buf.reserve(2 + kv);
                buf.extend_from_slice(&[tag, kv as u8, 0x0a, key.len() as u8]);
                buf.extend_from_slice(key.as_bytes());
                buf.extend_from_slice(&[0x12, any as u8, 0x18]);
                put_varint(buf, i as u64);
                return;
            }
            _ => {}
        }
    }
    let any = any_len(v);
    let kv = len_field_len(1, key.len()) + len_field_len(2, any);
    buf.reserve(kv + 6);
    put_len_prefix(buf, field, kv);
    put_bytes(buf, 1, key.as_bytes());
    put_len_prefix(buf, 2, any);
    put_any(buf, v);
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Span kinds used here (`Span.SpanKind`).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// The fixed part of every batch: the encoded `Resource` and `InstrumentationScope`.
#[derive(Debug, Clone)]
pub struct BatchHead {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), tag and length included.
    scope: Vec<u8>,
}

impl BatchHead {
    /// `resource`: the resource's attributes; `scope`: the instrumentation scope's name
    /// and version.
    pub fn new(resource: &[(&str, &str)], scope_name: &str, scope_version: &str) -> BatchHead {
        let mut body = Vec::new();
        for (k, v) in resource {
            put_kv(&mut body, 1, k, &Value::Str(v));
        }
        let mut res = Vec::with_capacity(body.len() + 4);
        put_bytes(&mut res, 1, &body);
        body.clear();
        if !scope_name.is_empty() {
            put_bytes(&mut body, 1, scope_name.as_bytes());
        }
        if !scope_version.is_empty() {
            put_bytes(&mut body, 2, scope_version.as_bytes());
        }
        let mut scope = Vec::with_capacity(body.len() + 4);
        put_bytes(&mut scope, 1, &body);
        BatchHead { resource: res, scope }
    }

    /// The most bytes the wrappers in front of the spans can take.
    fn reserve(&self) -> usize {
        // ExportTraceServiceRequest.resource_spans (tag + varint) and
        // ResourceSpans.scope_spans (tag + varint), each varint at most 10 bytes.
        self.resource.len() + self.scope.len() + 2 * 11
    }
}

/// Spans being encoded into one `ExportTraceServiceRequest`.
pub struct SpanBatch {
    head: BatchHead,
    /// `[room for the wrappers][ScopeSpans.spans entries…]`
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Span fields kept by [`SpanBuilder::save_since`].
    saved: Vec<u8>,
    count: usize,
}

impl SpanBatch {
    pub fn new(head: BatchHead) -> SpanBatch {
        let mut b = SpanBatch { head, buf: Vec::new(), scratch: Vec::with_capacity(2048), saved: Vec::new(), count: 0 };
        b.reset(0);
        b
    }

    fn reset(&mut self, capacity: usize) {
        let room = self.head.reserve();
        self.buf = Vec::with_capacity(room + capacity);
        self.buf.resize(room, 0);
        self.count = 0;
    }

    /// Spans in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded bytes of the spans so far.
    pub fn bytes(&self) -> usize {
        self.buf.len() - self.head.reserve()
    }

    /// Starts a span; it is added to the batch when the builder is dropped. `name` is
    /// the concatenation of its parts (no allocation for `"chat gpt-4o"`).
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        &mut self,
        trace_id: u128,
        span_id: u64,
        parent_id: u64,
        name: &[&str],
        kind: Kind,
        start: SystemTime,
        end: SystemTime,
    ) -> SpanBuilder<'_> {
        let b = &mut self.scratch;
        b.clear();
        // Span: trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
        // start = 7, end = 8, attributes = 9, events = 11, status = 15, flags = 16.
        put_bytes(b, 1, &trace_id.to_be_bytes());
        put_bytes(b, 2, &span_id.to_be_bytes());
        if parent_id != 0 {
            put_bytes(b, 4, &parent_id.to_be_bytes());
        }
        let name_len: usize = name.iter().map(|p| p.len()).sum();
        if name_len > 0 {
            put_len_prefix(b, 5, name_len);
            for p in name {
                b.extend_from_slice(p.as_bytes());
            }
        }
        put_varint_field(b, 6, kind as u64);
        let start_ns = unix_nanos(start);
        put_fixed64(b, 7, start_ns);
        put_fixed64(b, 8, unix_nanos(end).max(start_ns));
        // flags: the W3C trace flags (sampled).
        put_tag(b, 16, FIXED32);
        b.extend_from_slice(&1u32.to_le_bytes());
        SpanBuilder { batch: self }
    }

    /// The encoded `ExportTraceServiceRequest`; the batch starts again empty, with room
    /// for about as many bytes.
    pub fn take(&mut self) -> Bytes {
        let spans = self.bytes();
        let room = self.head.reserve();
        let scope_spans = self.head.scope.len() + spans;
        let resource_spans = self.head.resource.len() + len_field_len(2, scope_spans);
        let mut front = Vec::with_capacity(room);
        put_len_prefix(&mut front, 1, resource_spans);
        front.extend_from_slice(&self.head.resource);
        put_len_prefix(&mut front, 2, scope_spans);
        front.extend_from_slice(&self.head.scope);
        let at = room - front.len();
        let mut buf = std::mem::take(&mut self.buf);
        buf[at..room].copy_from_slice(&front);
        self.reset(spans);
        Bytes::from(buf).slice(at..)
    }
}

/// One span being written; added to its batch when dropped.
pub struct SpanBuilder<'a> {
    batch: &'a mut SpanBatch,
}

impl SpanBuilder<'_> {
    pub fn attr(&mut self, k: &str, v: Value) -> &mut Self {
        put_kv(&mut self.batch.scratch, 9, k, &v);
        self
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.attr(k, Value::Str(v))
    }

    /// Sets `k` only when `v` is not empty.
    pub fn str_nonempty(&mut self, k: &str, v: &str) -> &mut Self {
        if !v.is_empty() {
            self.str(k, v);
        }
        self
    }

    pub fn int(&mut self, k: &str, v: i64) -> &mut Self {
        self.attr(k, Value::Int(v))
    }

    pub fn double(&mut self, k: &str, v: f64) -> &mut Self {
        self.attr(k, Value::Double(v))
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.attr(k, Value::Bool(v))
    }

    pub fn strs(&mut self, k: &str, v: &[&str]) -> &mut Self {
        self.attr(k, Value::Strs(v))
    }

    /// A span event with string attributes.
    pub fn event(&mut self, name: &str, at: SystemTime, attributes: &[(&str, &str)]) -> &mut Self {
        // Event: time_unix_nano = 1, name = 2, attributes = 3.
        let len = 9
            + if name.is_empty() { 0 } else { len_field_len(2, name.len()) }
            + attributes.iter().map(|(k, v)| len_field_len(3, kv_len(k, &Value::Str(v)))).sum::<usize>();
        let b = &mut self.batch.scratch;
        put_len_prefix(b, 11, len);
        put_fixed64(b, 1, unix_nanos(at));
        if !name.is_empty() {
            put_bytes(b, 2, name.as_bytes());
        }
        for (k, v) in attributes {
            put_kv(b, 3, k, &Value::Str(v));
        }
        self
    }

    /// Marks the span failed (status ERROR with `message`). Call at most once.
    pub fn error(&mut self, message: &str) -> &mut Self {
        // Status: message = 2, code = 3 (ERROR = 2).
        let len = if message.is_empty() { 0 } else { len_field_len(2, message.len()) } + 2;
        let b = &mut self.batch.scratch;
        put_len_prefix(b, 15, len);
        if !message.is_empty() {
            put_bytes(b, 2, message.as_bytes());
        }
        put_varint_field(b, 3, 2);
        self
    }

    /// Where the fields written from here on start (for [`save_since`](Self::save_since)).
    pub fn mark(&self) -> usize {
        self.batch.scratch.len()
    }

    /// Keeps the span fields (attributes, events) written since `mark`, encoded: the next
    /// span of the batch that carries the same ones takes them with
    /// [`write_saved`](Self::write_saved) instead of encoding them again.
    pub fn save_since(&mut self, mark: usize) -> &mut Self {
        let SpanBatch { scratch, saved, .. } = &mut *self.batch;
        saved.clear();
        saved.extend_from_slice(scratch.get(mark..).unwrap_or_default());
        self
    }

    /// The fields kept by [`save_since`](Self::save_since).
    pub fn write_saved(&mut self) -> &mut Self {
        let SpanBatch { scratch, saved, .. } = &mut *self.batch;
        scratch.extend_from_slice(saved);
        self
    }

    /// Ends the span (the same as dropping the builder).
    pub fn end(self) {}
}

impl Drop for SpanBuilder<'_> {
    fn drop(&mut self) {
        let SpanBatch { buf, scratch, count, .. } = &mut *self.batch;
        // ScopeSpans.spans = 2.
        put_bytes(buf, 2, scratch);
        *count += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
    use prost::Message;

    use super::*;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::decode_varint(&mut b.as_slice()).unwrap(), v);
        }
    }

    /// Every field and value kind the exporter writes, against what prost decodes; and
    /// the bytes are exactly prost's own encoding of the same message.
    #[test]
    fn a_batch_decodes_to_the_spans_written() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let t1 = t0 + Duration::from_millis(250);
        let long = "x".repeat(300); // two-byte lengths
        let head = BatchHead::new(&[("service.name", "aigw"), ("service.version", "1.2.3")], "aigw-proxy", "1.2.3");
        let mut batch = SpanBatch::new(head);
        {
            let mut b = batch.span(
                0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                0x1112_1314_1516_1718,
                0,
                &["chat", " ", "gpt-4o"],
                Kind::Server,
                t0,
                t1,
            );
            b.str("gen_ai.operation.name", "chat").bool("gen_ai.request.stream", false).bool("b", true);
            b.int("http.response.status_code", 200).int("neg", -5).int("zero", 0).double("ttfc", 0.125);
            b.strs("gen_ai.response.finish_reasons", &["stop", "length"]).strs("empty", &[]);
            b.str("long", &long).str("empty.value", "");
            b.event("gen_ai.client.inference.operation.details", t1, &[("gen_ai.input.messages", "[]"), ("long", &long)]);
            b.event("gen_ai.response.first_chunk", t0, &[]);
            b.error("upstream answered 500");
        }
        // end before start is clamped; no name; a parent; an error without a message
        batch.span(7, 8, 9, &[], Kind::Client, t1, t0).error("");
        batch.span(7, 10, 8, &["GET"], Kind::Internal, t0, t1).end();
        assert_eq!(batch.len(), 3);
        let bytes = batch.take();
        assert!(batch.is_empty());

        let ns = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let server = Span {
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes().to_vec(),
            span_id: 0x1112_1314_1516_1718u64.to_be_bytes().to_vec(),
            flags: 1,
            name: "chat gpt-4o".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: ns(t0),
            end_time_unix_nano: ns(t1),
            attributes: vec![
                kv("gen_ai.operation.name", s("chat")),
                kv("gen_ai.request.stream", any_value::Value::BoolValue(false)),
                kv("b", any_value::Value::BoolValue(true)),
                kv("http.response.status_code", any_value::Value::IntValue(200)),
                kv("neg", any_value::Value::IntValue(-5)),
                kv("zero", any_value::Value::IntValue(0)),
                kv("ttfc", any_value::Value::DoubleValue(0.125)),
                kv(
                    "gen_ai.response.finish_reasons",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue { value: Some(s("stop")) }, AnyValue { value: Some(s("length")) }],
                    }),
                ),
                kv("empty", any_value::Value::ArrayValue(ArrayValue { values: vec![] })),
                kv("long", s(&long)),
                kv("empty.value", s("")),
            ],
            events: vec![
                span::Event {
                    time_unix_nano: ns(t1),
                    name: "gen_ai.client.inference.operation.details".into(),
                    attributes: vec![kv("gen_ai.input.messages", s("[]")), kv("long", s(&long))],
                    ..Default::default()
                },
                span::Event { time_unix_nano: ns(t0), name: "gen_ai.response.first_chunk".into(), ..Default::default() },
            ],
            status: Some(Status { message: "upstream answered 500".into(), code: status::StatusCode::Error as i32 }),
            ..Default::default()
        };
        let client = Span {
            trace_id: 7u128.to_be_bytes().to_vec(),
            span_id: 8u64.to_be_bytes().to_vec(),
            parent_span_id: 9u64.to_be_bytes().to_vec(),
            flags: 1,
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: ns(t1),
            end_time_unix_nano: ns(t1),
            status: Some(Status { message: String::new(), code: status::StatusCode::Error as i32 }),
            ..Default::default()
        };
        let internal = Span {
            trace_id: 7u128.to_be_bytes().to_vec(),
            span_id: 10u64.to_be_bytes().to_vec(),
            parent_span_id: 8u64.to_be_bytes().to_vec(),
            flags: 1,
            name: "GET".into(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: ns(t0),
            end_time_unix_nano: ns(t1),
            ..Default::default()
        };
        let want = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("aigw")), kv("service.version", s("1.2.3"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "aigw-proxy".into(), version: "1.2.3".into(), ..Default::default() }),
                    spans: vec![server, client, internal],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let got = ExportTraceServiceRequest::decode(bytes.clone()).expect("valid protobuf");
        assert_eq!(got, want);
        // Not only equal when decoded: the same bytes prost writes, but for the span
        // header's field order (flags, field 16, is written before the attributes).
        assert_eq!(bytes.len(), want.encoded_len());
    }

    /// Around the lengths where one-byte lengths end, the bytes are prost's.
    #[test]
    fn attribute_lengths_at_the_one_byte_boundaries() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        for klen in [0, 1, 62, 63, 64, 65, 120, 130] {
            for vlen in [0, 1, 56, 57, 58, 59, 120, 126, 127, 128, 200, 20_000] {
                let (k, v) = ("k".repeat(klen), "v".repeat(vlen));
                for value in [Value::Str(&v), Value::Int(vlen as i64 - 100), Value::Int(i64::MIN)] {
                    let mut batch = SpanBatch::new(BatchHead::new(&[], "", ""));
                    batch.span(1, 2, 0, &[], Kind::Internal, t, t).attr(&k, value);
                    let bytes = batch.take();
                    let got = ExportTraceServiceRequest::decode(bytes.clone()).unwrap();
                    let want = match value {
                        Value::Str(v) => kv(&k, s(v)),
                        Value::Int(i) => kv(&k, any_value::Value::IntValue(i)),
                        _ => unreachable!(),
                    };
                    let attrs = &got.resource_spans[0].scope_spans[0].spans[0].attributes;
                    assert_eq!(attrs, &vec![want], "key {klen}, value {vlen}");
                    // (An empty key is written, where prost leaves a default field out.)
                    if klen > 0 {
                        assert_eq!(bytes.len(), got.encoded_len(), "key {klen}, value {vlen}: canonical");
                    }
                }
            }
        }
    }

    #[test]
    fn fields_written_once_can_be_written_on_another_span() {
        let mut batch = SpanBatch::new(BatchHead::new(&[], "", ""));
        let t = SystemTime::now();
        {
            let mut a = batch.span(1, 2, 0, &["a"], Kind::Server, t, t);
            a.str("only.a", "1");
            let mark = a.mark();
            a.str("k", "v").int("n", 7).event("e", t, &[("x", "y")]);
            a.save_since(mark);
        }
        batch.span(1, 3, 2, &["b"], Kind::Client, t, t).str("only.b", "2").write_saved();
        let got = ExportTraceServiceRequest::decode(batch.take()).unwrap();
        let spans = &got.resource_spans[0].scope_spans[0].spans;
        let keys = |s: &Span| s.attributes.iter().map(|a| a.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&spans[0]), ["only.a", "k", "n"]);
        assert_eq!(keys(&spans[1]), ["only.b", "k", "n"]);
        assert_eq!(spans[0].attributes[1..], spans[1].attributes[1..]);
        assert_eq!(spans[1].events.len(), 1);
        assert_eq!(spans[1].events[0].attributes, vec![kv("x", s("y"))]);
    }

    #[test]
    fn an_empty_batch_and_a_reused_batch_encode_cleanly() {
        let head = BatchHead::new(&[], "", "");
        let mut batch = SpanBatch::new(head);
        let empty = ExportTraceServiceRequest::decode(batch.take()).unwrap();
        assert_eq!(empty.resource_spans.len(), 1);
        assert!(empty.resource_spans[0].scope_spans[0].spans.is_empty());
        for round in 0..3u64 {
            for i in 0..200u64 {
                batch.span(1, round * 1000 + i, 0, &["s"], Kind::Internal, SystemTime::now(), SystemTime::now()).int("i", i as i64);
            }
            let got = ExportTraceServiceRequest::decode(batch.take()).unwrap();
            let spans = &got.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 200);
            assert_eq!(spans[199].span_id, (round * 1000 + 199).to_be_bytes().to_vec());
        }
    }
}
