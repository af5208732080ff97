//! A structural JSON key scanner: walks a JSON document once, tracking strings and
//! nesting, and reports every object key with its depth and where its value starts —
//! without building anything. Observing a whole answer for usage needs a handful of
//! keys (`usage`, `model`, `error`, tool calls); deserializing the whole answer to find
//! them cost ~15k instructions per request for an 811-byte chat completion, the scan and
//! one small `usage` parse cost a fraction of that.
//!
//! Where the bytes go: string contents are most of an answer (the text, ids, keys), and
//! are crossed eight bytes at a time ([`string_end`]: a word's quotes and backslashes found
//! with integer operations), long ones with `memchr2`; only the few bytes between strings
//! (`":`, `,"`, numbers, brackets) are looked at one by one. A walk of the whole document
//! cannot be skipped: an answer's `done` and every key's depth depend on every bracket
//! outside a string, and a document cut short or malformed must read as it always did.
//!
//! The scanner does not validate: on malformed input it reports what it saw and stops at
//! the end of the bytes. [`scan_keys`] returns whether the top-level value was an object
//! that closed properly.

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
pub fn scan_keys(bytes: &[u8], mut f: impl FnMut(usize, &[u8], usize)) -> bool {
    // Container kinds on the path: true = object. Depth beyond 128 is not tracked exactly
    // (serde_json refuses such documents anyway).
    let mut stack = [false; 128];
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut closed_top = false;
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        let b = bytes[i];
        if !STRUCTURAL[b as usize] {
            i += 1;
            continue;
        }
        match b {
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
                if depth == 0 && b == b'}' {
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

/// The offset of the quote that closes a string whose content starts at `start`. Eight
/// bytes at a time (SWAR: a word's quotes and backslashes found with a few integer
/// operations), then SIMD (`memchr2`) once a string proves long: keys and short values end
/// within a word or two, and answer texts are most of a document's bytes.
#[inline(always)]
pub(crate) fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    let words_until = start.saturating_add(64);
    while j < words_until {
        let Some(w) = bytes.get(j..j + 8) else { break };
        let m = quote_or_backslash(word(w));
        if m == 0 {
            j += 8;
            continue;
        }
        j += (m.trailing_zeros() / 8) as usize;
        if bytes[j] == b'"' {
            return Some(j);
        }
        j += 2;
    }
    loop {
        j += memchr::memchr2(b'"', b'\\', bytes.get(j..)?)?;
        if bytes[j] == b'"' {
            return Some(j);
        }
        j += 2;
    }
}

/// Eight bytes as a little-endian word (byte `k` in bits `8k..8k+8`).
#[inline]
pub(crate) fn word(w: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&w[..8]);
    u64::from_le_bytes(a)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that equals `b`. Exact for the lowest such byte (a
/// borrow only reaches bytes above the first match), which is all the callers use.
#[inline]
pub(crate) fn bytes_eq(x: u64, b: u8) -> u64 {
    let v = x ^ (LO * b as u64);
    v.wrapping_sub(LO) & !v & HI
}

/// The high bit of each byte of `x` below `n` (`n` ≤ 128), exact for the lowest one.
#[inline]
pub(crate) fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(LO * n as u64) & !x & HI
}

#[inline]
fn quote_or_backslash(x: u64) -> u64 {
    bytes_eq(x, b'"') | bytes_eq(x, b'\\')
}

/// The unsigned integer starting at `at` (digits only; None for anything else, a float
/// or a number over `u64`).
pub fn uint_at(bytes: &[u8], at: usize) -> Option<u64> {
    let digits = bytes.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 || matches!(digits.get(n), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    digits[..n].iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add((d - b'0') as u64))
}

/// Parses one JSON value starting at `at` (trailing bytes are not looked at).
pub fn parse_at<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8], at: usize) -> Option<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes.get(at..)?);
    T::deserialize(&mut de).ok()
}

/// The bytes of a JSON string value starting at `at` (between the quotes, escapes as they
/// are), or None when the value there is not a string.
pub fn raw_str_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    bytes.get(at + 1..string_end(bytes, at + 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(json: &str) -> (Vec<(usize, String, char)>, bool) {
        let mut out = Vec::new();
        let b = json.as_bytes();
        let ok = scan_keys(b, |d, k, at| out.push((d, String::from_utf8_lossy(k).into_owned(), b.get(at).map_or('∅', |c| *c as char))));
        (out, ok)
    }

    #[test]
    fn keys_depths_and_values() {
        let (k, ok) =
            keys(r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {} [ { \\","tool_calls":[{"id":"t"}]}}],"usage" : {"n":1}}"#);
        assert!(ok);
        let names: Vec<(usize, &str, char)> = k.iter().map(|(d, n, c)| (*d, n.as_str(), *c)).collect();
        assert_eq!(
            names,
            vec![
                (1, "id", '"'),
                (1, "choices", '['),
                (3, "message", '{'),
                (4, "content", '"'),
                (4, "tool_calls", '['),
                (6, "id", '"'),
                (1, "usage", '{'),
                (2, "n", '1')
            ]
        );
    }

    #[test]
    fn malformed_and_non_objects() {
        for bad in ["", "not json", "[1,2]", "{\"a\":1", "{\"a\":\"unterminated", "\"str\""] {
            assert!(!keys(bad).1, "{bad}");
        }
        assert!(keys("  {}  ").1);
        let deep = "[".repeat(300) + &"]".repeat(300);
        assert!(!keys(&deep).1);
    }

    #[test]
    fn unsigned_integers_in_place() {
        for (text, want) in [
            ("12,", Some(12)),
            ("0}", Some(0)),
            ("-3", None),
            ("1.5", None),
            ("2e3", None),
            ("\"7\"", None),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
        ] {
            assert_eq!(uint_at(text.as_bytes(), 0), want, "{text}");
        }
    }

    #[test]
    fn parsing_values_in_place() {
        let b = br#"{"usage": {"prompt_tokens": 3}, "model": "m\"x"}"#;
        let mut at = (0, 0);
        scan_keys(b, |_, k, p| match k {
            b"usage" => at.0 = p,
            b"model" => at.1 = p,
            _ => {}
        });
        let v: serde_json::Value = parse_at(b, at.0).unwrap();
        assert_eq!(v["prompt_tokens"], 3);
        assert_eq!(parse_at::<String>(b, at.1).as_deref(), Some("m\"x"));
        assert_eq!(raw_str_at(b, at.1), Some(&br#"m\"x"#[..]));
        assert_eq!(raw_str_at(b, at.0), None);
    }
}
