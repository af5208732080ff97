//! Trace and span ids, and the W3C `traceparent` header (`00-{trace}-{parent}-{flags}`).
//! Ids come from a per-thread generator (no lock, no allocation, no syscall per id).

use std::cell::Cell;

/// A W3C trace context as received or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    /// The sender's span (our SERVER span's parent).
    pub parent_id: u64,
    pub sampled: bool,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex(s: &[u8]) -> Option<u128> {
    s.iter().try_fold(0u128, |acc, &b| Some(acc << 4 | hex_val(b)? as u128))
}

impl TraceParent {
    /// Parses a `traceparent` value (version 00 exactly 55 bytes; a later version may be
    /// longer, its first four fields are read). Invalid or all-zero ids give None (the
    /// request then starts a new trace, as the W3C recommendation says).
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = parse_hex(&v[0..2])?;
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let trace_id = parse_hex(&v[3..35])?;
        let parent_id = parse_hex(&v[36..52])? as u64;
        let flags = parse_hex(&v[53..55])? as u8;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
    }

    /// `00-{trace}-{span}-{flags}` for a span of ours.
    pub fn format(trace_id: u128, span_id: u64, sampled: bool) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        for i in 0..32 {
            out[3 + i] = HEX[((trace_id >> (124 - 4 * i)) & 0xf) as usize];
        }
        for i in 0..16 {
            out[36 + i] = HEX[((span_id >> (60 - 4 * i)) & 0xf) as usize];
        }
        out[53] = b'0';
        out[54] = if sampled { b'1' } else { b'0' };
        out
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new().hash_one((std::thread::current().id(), std::time::SystemTime::now()));
    s | 1
}

/// splitmix64: fast, well distributed, never the same sequence twice per process.
fn next() -> u64 {
    STATE.with(|c| {
        let mut z = c.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        c.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new, non-zero span id.
pub fn span_id() -> u64 {
    loop {
        let v = next();
        if v != 0 {
            return v;
        }
    }
}

/// A new, non-zero trace id.
pub fn trace_id() -> u128 {
    loop {
        let v = (next() as u128) << 64 | next() as u128;
        if v != 0 {
            return v;
        }
    }
}

/// Lower-case hex of a trace id (32 characters).
pub fn trace_hex(id: u128) -> String {
    format!("{id:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(v).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert!(tp.sampled);
        assert_eq!(&TraceParent::format(tp.trace_id, tp.parent_id, true), v);
        assert!(!TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
        // A future version with extra fields is read.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ids_are_non_zero_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(span_id()));
        }
        assert_ne!(trace_id(), trace_id());
        assert_eq!(trace_hex(1).len(), 32);
    }
}
