//! Incremental Server-Sent Events parser: bytes in (split anywhere), events out.
//! Lines end in `\n`, `\r\n` or `\r`; a blank line ends an event; `:` lines are
//! comments (OpenRouter's `: OPENROUTER PROCESSING`, DeepSeek's `: keep-alive`);
//! several `data:` lines join with `\n`; one space after the colon is stripped.
//!
//! The parser also tracks the stream offset of the last *event boundary* (a point where
//! no event is half-read), so a forwarder can send whole events only and hold back a
//! partial one: a stream cut in the middle of an event then never reaches the client
//! with half a line followed by the gateway's error event.

/// One dispatched event. `event` is empty for the default type (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Default cap on one event (its partial line plus accumulated data), used when the
/// caller sets none. Events of any size up to the cap pass intact.
pub const DEFAULT_MAX_EVENT: usize = 16 << 20;

#[derive(Debug)]
pub struct Parser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// A field line of the current event was seen (the event is half-read).
    in_event: bool,
    max_event: usize,
    /// Total bytes fed.
    consumed: u64,
    /// Stream offset just after the last event boundary.
    boundary: u64,
    /// An event exceeded the cap: parsing stopped for good.
    overflow: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::with_limit(DEFAULT_MAX_EVENT)
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// A parser that gives up (see [`overflowed`](Self::overflowed)) when one event grows
    /// past `max_event` bytes.
    pub fn with_limit(max_event: usize) -> Parser {
        Parser {
            buf: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            in_event: false,
            max_event,
            consumed: 0,
            boundary: 0,
            overflow: false,
        }
    }

    /// Stream offset (bytes since the start) just after the last complete event, comment
    /// or blank line: everything before it can be forwarded whole.
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// Total bytes fed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether an event grew past the cap (nothing after it was parsed).
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        if self.overflow {
            self.consumed += chunk.len() as u64;
            return;
        }
        let base = self.consumed - self.buf.len() as u64;
        self.consumed += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let len = self.buf.len();
        let mut i = 0;
        while i < len {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                let mut next = i + 1;
                if b == b'\r' {
                    if i + 1 == len {
                        // `\r` at the end: it may be the first half of `\r\n`; wait.
                        break;
                    }
                    if self.buf[i + 1] == b'\n' {
                        next = i + 2;
                    }
                }
                let line = std::mem::take(&mut self.buf);
                self.line(&line[start..i], out);
                self.buf = line;
                if !self.in_event {
                    self.boundary = base + next as u64;
                }
                start = next;
                i = next;
                continue;
            }
            i += 1;
        }
        self.buf.drain(..start);
        if self.buf.len() + self.data.len() > self.max_event {
            self.overflow = true;
            self.buf = Vec::new();
            self.data = String::new();
        }
    }

    /// At end of stream: a final event without its blank line is still dispatched when
    /// its data is complete lines; a trailing partial line is dropped (returned size).
    pub fn finish(&mut self, out: &mut Vec<Event>) -> usize {
        let partial = self.buf.len();
        self.buf.clear();
        if !self.overflow {
            self.dispatch(out);
        }
        partial
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        self.in_event = true;
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        if self.has_data {
            out.push(Event { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.data) });
        }
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.in_event = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in input.chunks(piece.max(1)) {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    fn ev(event: &str, data: &str) -> Event {
        Event { event: event.into(), data: data.into() }
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let input =
            b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\nevent: message_start\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata:[DONE]\n\n";
        let want = vec![ev("", "{\"a\":1}"), ev("message_start", "{\"b\":\n2}"), ev("", "[DONE]")];
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input, piece), want, "piece size {piece}");
        }
    }

    #[test]
    fn lone_cr_and_eof_handling() {
        assert_eq!(parse_in_pieces(b"data: x\r\rdata: y\n", 3), vec![ev("", "x"), ev("", "y")]);
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.push(b"data: complete\n\ndata: partial", &mut out);
        assert_eq!(p.finish(&mut out), "data: partial".len());
        assert_eq!(out, vec![ev("", "complete")]);
        // Comments only, and blank data lines.
        assert_eq!(parse_in_pieces(b": keep-alive\n\n: x\n\n", 4), vec![]);
        assert_eq!(parse_in_pieces(b"data:\n\n", 4), vec![ev("", "")]);
    }

    /// The boundary is always just after a whole event (or comment), in every split.
    #[test]
    fn boundaries_are_event_ends() {
        let input = b": c\n\ndata: {\"a\":1}\n\nevent: e\r\ndata: x\r\n\r\ndata: tail";
        let ends = [0u64, 4, 5, 20, 41];
        for piece in 1..input.len() {
            let mut p = Parser::new();
            let mut out = Vec::new();
            for c in input.chunks(piece) {
                p.push(c, &mut out);
                let b = p.boundary();
                assert!(ends.contains(&b), "piece {piece}: boundary {b}");
                assert!(b <= p.consumed());
            }
            assert_eq!(p.boundary(), 41, "piece {piece}");
        }
    }

    #[test]
    fn large_events_pass_up_to_the_cap() {
        let big = "x".repeat(3 << 20);
        let input = format!("data: {big}\n\ndata: after\n\n");
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(64 << 10) {
            p.push(c, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data.len(), 3 << 20);
        assert!(!p.overflowed());
        let mut p = Parser::with_limit(1 << 20);
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(64 << 10) {
            p.push(c, &mut out);
        }
        assert!(p.overflowed() && out.is_empty());
        assert_eq!(p.boundary(), 0);
    }
}
