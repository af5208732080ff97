//! Incremental Server-Sent Events parser: bytes in (split anywhere), events out.
//! Lines end in `\n`, `\r\n` or `\r`; a blank line ends an event; `:` lines are
//! comments (OpenRouter's `: OPENROUTER PROCESSING`, DeepSeek's `: keep-alive`);
//! several `data:` lines join with `\n`; one space after the colon is stripped.

/// One dispatched event. `event` is empty for the default type (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// A partial line longer than this is dropped (a misbehaving upstream must not grow
/// our memory without bound).
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// Bytes dropped because a line exceeded [`MAX_LINE`].
    pub dropped: usize,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
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
                start = next;
                i = next;
                continue;
            }
            i += 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            self.dropped += self.buf.len();
            self.buf.clear();
        }
    }

    /// At end of stream: a final event without its blank line is still dispatched when
    /// its data is complete lines; a trailing partial line is dropped (returned size).
    pub fn finish(&mut self, out: &mut Vec<Event>) -> usize {
        let partial = self.buf.len();
        self.buf.clear();
        self.dispatch(out);
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

    #[test]
    fn oversized_lines_are_dropped() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.push(&vec![b'x'; MAX_LINE + 1], &mut out);
        assert_eq!(p.dropped, MAX_LINE + 1);
        p.push(b"\ndata: ok\n\n", &mut out);
        assert_eq!(out.last().unwrap().data, "ok");
    }
}
