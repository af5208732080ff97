//! AWS event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! ConverseStream uses it. All integers big-endian:
//!
//! ```text
//! total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32
//! ```
//!
//! Both CRCs (CRC-32/ISO-HDLC) are checked: a corrupted or truncated frame never decodes
//! as a shorter answer.

/// Frames larger than this are refused (Bedrock frames are small).
pub const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| match v {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// `:message-type` (`event`, `exception` or `error`).
    pub fn message_type(&self) -> &str {
        self.header(":message-type").unwrap_or("event")
    }

    /// `:event-type` or `:exception-type` or `:error-code`.
    pub fn kind(&self) -> &str {
        self.header(":event-type").or_else(|| self.header(":exception-type")).or_else(|| self.header(":error-code")).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    PreludeCrc,
    MessageCrc,
    TooLarge(usize),
    BadLength,
    BadHeader(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::PreludeCrc => f.write_str("event-stream prelude CRC mismatch"),
            DecodeError::MessageCrc => f.write_str("event-stream message CRC mismatch"),
            DecodeError::TooLarge(n) => write!(f, "event-stream frame of {n} bytes exceeds the limit"),
            DecodeError::BadLength => f.write_str("event-stream frame has inconsistent lengths"),
            DecodeError::BadHeader(w) => write!(f, "event-stream header is malformed: {w}"),
        }
    }
}

impl std::error::Error for DecodeError {}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32/ISO-HDLC (zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Incremental decoder: bytes in (split anywhere), messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Set after a fatal error: the stream cannot be resynchronised.
    failed: bool,
    /// Total bytes fed.
    consumed: u64,
    /// Stream offset just after the last whole, valid frame.
    boundary: u64,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Bytes of an incomplete frame held back.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Stream offset just after the last whole, valid frame: everything before it can be
    /// forwarded as whole frames; a partial or corrupt frame never is.
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Total bytes fed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Message>) -> Result<(), DecodeError> {
        self.consumed += chunk.len() as u64;
        if self.failed {
            return Ok(());
        }
        let base = self.consumed - chunk.len() as u64 - self.buf.len() as u64;
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        let result = loop {
            let rest = &self.buf[pos..];
            if rest.len() < 12 {
                break Ok(());
            }
            let total = be32(&rest[0..4]) as usize;
            let headers_len = be32(&rest[4..8]) as usize;
            if crc32(&rest[0..8]) != be32(&rest[8..12]) {
                break Err(DecodeError::PreludeCrc);
            }
            if total > MAX_FRAME {
                break Err(DecodeError::TooLarge(total));
            }
            if total < 16 || headers_len > total - 16 {
                break Err(DecodeError::BadLength);
            }
            if rest.len() < total {
                break Ok(());
            }
            let frame = &rest[..total];
            if crc32(&frame[..total - 4]) != be32(&frame[total - 4..]) {
                break Err(DecodeError::MessageCrc);
            }
            match parse_headers(&frame[12..12 + headers_len]) {
                Ok(headers) => out.push(Message { headers, payload: frame[12 + headers_len..total - 4].to_vec() }),
                Err(e) => break Err(e),
            }
            pos += total;
            self.boundary = base + pos as u64;
        };
        self.buf.drain(..pos);
        if result.is_err() {
            self.failed = true;
            self.buf.clear();
        }
        result
    }
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, DecodeError> {
        if b.len() < n {
            return Err(DecodeError::BadHeader("truncated"));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        let name = String::from_utf8(take(&mut b, name_len)?).map_err(|_| DecodeError::BadHeader("name is not UTF-8"))?;
        let kind = take(&mut b, 1)?[0];
        let v = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(&mut b, 1)?[0] as i8),
            3 => HeaderValue::Int16(i16::from_be_bytes(take(&mut b, 2)?.try_into().unwrap_or_default())),
            4 => HeaderValue::Int32(i32::from_be_bytes(take(&mut b, 4)?.try_into().unwrap_or_default())),
            5 => HeaderValue::Int64(i64::from_be_bytes(take(&mut b, 8)?.try_into().unwrap_or_default())),
            6 | 7 => {
                let l = take(&mut b, 2)?;
                let data = take(&mut b, u16::from_be_bytes([l[0], l[1]]) as usize)?;
                if kind == 6 {
                    HeaderValue::Bytes(data)
                } else {
                    HeaderValue::String(String::from_utf8(data).map_err(|_| DecodeError::BadHeader("string is not UTF-8"))?)
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(take(&mut b, 8)?.try_into().unwrap_or_default())),
            9 => HeaderValue::Uuid(take(&mut b, 16)?.try_into().unwrap_or_default()),
            _ => return Err(DecodeError::BadHeader("unknown value type")),
        };
        out.push((name, v));
    }
    Ok(out)
}

/// Encodes one frame (for fakes and tests).
pub fn encode(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, v) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        match v {
            HeaderValue::Bool(true) => h.push(0),
            HeaderValue::Bool(false) => h.push(1),
            HeaderValue::Byte(x) => {
                h.push(2);
                h.push(*x as u8);
            }
            HeaderValue::Int16(x) => {
                h.push(3);
                h.extend_from_slice(&x.to_be_bytes());
            }
            HeaderValue::Int32(x) => {
                h.push(4);
                h.extend_from_slice(&x.to_be_bytes());
            }
            HeaderValue::Int64(x) => {
                h.push(5);
                h.extend_from_slice(&x.to_be_bytes());
            }
            HeaderValue::Bytes(d) => {
                h.push(6);
                h.extend_from_slice(&(d.len() as u16).to_be_bytes());
                h.extend_from_slice(d);
            }
            HeaderValue::String(s) => {
                h.push(7);
                h.extend_from_slice(&(s.len() as u16).to_be_bytes());
                h.extend_from_slice(s.as_bytes());
            }
            HeaderValue::Timestamp(x) => {
                h.push(8);
                h.extend_from_slice(&x.to_be_bytes());
            }
            HeaderValue::Uuid(u) => {
                h.push(9);
                h.extend_from_slice(u);
            }
        }
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock event frame: `:message-type event`, `:event-type kind`, JSON payload.
pub fn event(kind: &str, payload: &serde_json::Value) -> Vec<u8> {
    encode(
        &[
            (":event-type", HeaderValue::String(kind.into())),
            (":content-type", HeaderValue::String("application/json".into())),
            (":message-type", HeaderValue::String("event".into())),
        ],
        payload.to_string().as_bytes(),
    )
}

/// A Bedrock exception frame inside a 200 stream.
pub fn exception(kind: &str, message: &str) -> Vec<u8> {
    encode(
        &[
            (":exception-type", HeaderValue::String(kind.into())),
            (":content-type", HeaderValue::String("application/json".into())),
            (":message-type", HeaderValue::String("exception".into())),
        ],
        serde_json::json!({ "message": message }).to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_in_every_split() {
        let all_types = encode(
            &[
                ("t", HeaderValue::Bool(true)),
                ("f", HeaderValue::Bool(false)),
                ("b", HeaderValue::Byte(-3)),
                ("s", HeaderValue::Int16(-300)),
                ("i", HeaderValue::Int32(70000)),
                ("l", HeaderValue::Int64(-1)),
                ("y", HeaderValue::Bytes(vec![1, 2, 3])),
                ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
                ("u", HeaderValue::Uuid([7; 16])),
            ],
            b"",
        );
        let mut stream = event("messageStart", &json!({"role": "assistant"}));
        stream.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}, "p": "abcdef"})));
        stream.extend(&all_types);
        stream.extend(exception("throttlingException", "slow down"));
        for split in 1..stream.len() {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for c in stream.chunks(split) {
                d.push(c, &mut out).unwrap();
            }
            assert_eq!(out.len(), 4, "split {split}");
            assert_eq!(d.pending(), 0);
            assert_eq!(out[0].kind(), "messageStart");
            assert_eq!(out[1].payload, json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}, "p": "abcdef"}).to_string().into_bytes());
            assert_eq!(out[2].headers.len(), 9);
            assert_eq!((out[3].message_type(), out[3].kind()), ("exception", "throttlingException"));
        }
    }

    #[test]
    fn corruption_is_detected_not_decoded() {
        let frame = event("metadata", &json!({"usage": {"inputTokens": 1}}));
        let mut bad_payload = frame.clone();
        let n = bad_payload.len();
        bad_payload[n - 6] ^= 0xFF;
        assert_eq!(Decoder::new().push(&bad_payload, &mut Vec::new()), Err(DecodeError::MessageCrc));
        let mut bad_prelude = frame.clone();
        bad_prelude[2] ^= 0x01;
        assert_eq!(Decoder::new().push(&bad_prelude, &mut Vec::new()), Err(DecodeError::PreludeCrc));
        // A truncated frame is held back, never emitted.
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.push(&frame[..frame.len() - 1], &mut out).unwrap();
        assert!(out.is_empty() && d.pending() == frame.len() - 1);
        // Oversized and inconsistent lengths.
        let mut huge = frame.clone();
        huge[..4].copy_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
        let crc = crc32(&huge[..8]);
        huge[8..12].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(Decoder::new().push(&huge, &mut Vec::new()), Err(DecodeError::TooLarge(_))));
    }
}
