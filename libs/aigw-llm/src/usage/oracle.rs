//! The whole-answer observer as it was before the fast path (2cc695b), kept verbatim as
//! the test oracle: unit tests over every golden answer and the `observe_json` fuzz
//! target check that [`super::observe_json`] gives the same [`Observation`] for any
//! bytes. Built for tests and with the `oracle` feature (the fuzz crate), never in the
//! proxy.

use super::{Observation, RawUsage, usage_key};

/// The bytes the scanner acts on; everything else (values, whitespace, `:`) is skipped.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b',' as usize] = true;
    t
};

/// Calls `f(depth, key, value_start)` for each object key (depth 1 = the top-level
/// object; `key` is the raw bytes between the quotes, escapes left as they are;
/// `value_start` is the offset of the value's first byte). Returns true when the
/// document is one object whose closing brace was reached.
fn scan_keys(bytes: &[u8], mut f: impl FnMut(usize, &[u8], usize)) -> bool {
    // Container kinds on the path: true = object. Depth beyond 128 is not tracked exactly
    // (serde_json refuses such documents anyway).
    let mut stack = [false; 128];
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut closed_top = false;
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        if !STRUCTURAL[bytes[i] as usize] {
            i += 1;
            continue;
        }
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let Some(j) = string_end(bytes, start) else { return false };
                let in_object = depth > 0 && stack[(depth - 1).min(127)];
                if in_object && expect_key {
                    let key = &bytes[start..j];
                    let mut k = j + 1;
                    while k < n && bytes[k].is_ascii_whitespace() {
                        k += 1;
                    }
                    if k < n && bytes[k] == b':' {
                        k += 1;
                        while k < n && bytes[k].is_ascii_whitespace() {
                            k += 1;
                        }
                        f(depth, key, k);
                        expect_key = false;
                        i = k;
                        continue;
                    }
                }
                expect_key = false;
                i = j + 1;
                continue;
            }
            b'{' => {
                if depth < 128 {
                    stack[depth] = true;
                }
                depth += 1;
                expect_key = true;
            }
            b'[' => {
                if depth < 128 {
                    stack[depth] = false;
                }
                depth += 1;
                expect_key = false;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                expect_key = false;
                if depth == 0 && bytes[i] == b'}' {
                    closed_top = true;
                }
            }
            b',' => expect_key = depth > 0 && stack[(depth - 1).min(127)],
            _ => {}
        }
        i += 1;
    }
    closed_top && depth == 0
}

/// The offset of the quote that closes a string whose content starts at `start`
/// (SIMD search for the next quote or backslash: strings are most of a document's bytes).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    // Keys and short values end within a few bytes: a plain loop beats a SIMD call there.
    for (k, &b) in bytes.get(start..)?.iter().take(16).enumerate() {
        match b {
            b'"' => return Some(start + k),
            b'\\' => break,
            _ => {}
        }
    }
    let mut j = start;
    loop {
        j += memchr::memchr2(b'"', b'\\', bytes.get(j..)?)?;
        if bytes[j] == b'"' {
            return Some(j);
        }
        j += 2;
    }
}

/// The bytes of a JSON string value starting at `at` (between the quotes, escapes as they
/// are), or None when the value there is not a string.
fn raw_str_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    bytes.get(at + 1..string_end(bytes, at + 1)?)
}

/// Observes a non-streamed JSON body with one structural scan ([`crate::scan`]): the
/// top-level `usage` object's numbers are read in place (no deserializer), `model` and `id`
/// parsed as strings; tool calls are recognised by their keys (`tool_calls` with items,
/// Converse `toolUse`, a `type` of `tool_use` or `function_call`); finish reasons from
/// `choices[].finish_reason`, `stop_reason`, `stopReason` or a Responses `status`; a
/// top-level `error` is the upstream's error.
pub fn observe_json(bytes: &[u8]) -> Observation {
    use crate::scan::{parse_at, uint_at};
    let mut o = Observation::default();
    let mut raw = RawUsage::default();
    let mut in_usage = false;
    // Which `*_details` object of the usage the depth-3 keys belong to.
    let mut details: Option<&'static str> = None;
    let complete = scan_keys(bytes, |depth, key, at| {
        if depth == 1 {
            in_usage = key == b"usage";
            details = None;
        }
        if in_usage && depth >= 2 {
            usage_key(&mut raw, &mut details, depth, key, uint_at(bytes, at));
            return;
        }
        match (depth, key) {
            (1, b"model") => {
                if let Some(m) = parse_at::<String>(bytes, at).filter(|m| !m.is_empty()) {
                    o.model = Some(m);
                }
            }
            (1, b"id") if o.id.is_none() && bytes.get(at) == Some(&b'"') => {
                o.id = parse_at::<String>(bytes, at).filter(|m| !m.is_empty());
            }
            // Chat `choices[].finish_reason`, Anthropic `stop_reason`, Converse `stopReason`.
            (3, b"finish_reason") | (1, b"stop_reason" | b"stopReason") => {
                if let Some(r) = raw_str_at(bytes, at).filter(|r| !r.is_empty()) {
                    o.finish_reason = Some(String::from_utf8_lossy(r).into_owned());
                }
            }
            // Responses objects: the final status.
            (1, b"status") => {
                if let Some(r @ (b"completed" | b"incomplete" | b"failed" | b"cancelled")) = raw_str_at(bytes, at) {
                    o.finish_reason = Some(String::from_utf8_lossy(r).into_owned());
                }
            }
            (1, b"error") => {
                if let Some(e) = parse_at::<serde_json::Value>(bytes, at).filter(|e| !e.is_null()) {
                    let msg = e.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| e.to_string());
                    o.error = Some(msg);
                }
            }
            (_, b"tool_calls") => {
                let rest = bytes.get(at + 1..).unwrap_or_default();
                let first = rest.iter().find(|b| !b.is_ascii_whitespace());
                if bytes.get(at) == Some(&b'[') && first.is_some_and(|b| *b != b']') {
                    o.has_tool_calls = true;
                }
            }
            (_, b"toolUse") => o.has_tool_calls = true,
            (_, b"type") => {
                if matches!(raw_str_at(bytes, at), Some(b"tool_use" | b"function_call")) {
                    o.has_tool_calls = true;
                }
            }
            _ => {}
        }
    });
    o.usage.merge(&raw.to_usage());
    o.done = complete;
    o
}
