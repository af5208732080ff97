//! The AWS event-stream decoder: any bytes, split anywhere, never panic; splitting does not
//! change what decodes, and whatever decodes re-encodes to the same bytes.
#![no_main]
use aigw_llm::eventstream::{Decoder, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let whole = Decoder::new().push(data, &mut a);
    let mut d = Decoder::new();
    let mut pieces = Ok(());
    for c in data.chunks(split) {
        if pieces.is_ok() {
            pieces = d.push(c, &mut b);
        }
    }
    assert_eq!(whole.is_ok(), pieces.is_ok());
    assert_eq!(a, b);
    let mut reencoded = Vec::new();
    for m in &a {
        let headers: Vec<(&str, _)> = m.headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        reencoded.extend(encode(&headers, &m.payload));
    }
    assert!(data.starts_with(&reencoded));
});
