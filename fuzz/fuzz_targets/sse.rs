//! The SSE parser: any bytes, split anywhere, never panic; the split does not change the events.
#![no_main]
use aigw_llm::sse::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let (mut whole, mut pieces) = (Parser::new(), Parser::new());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    whole.push(data, &mut a);
    for c in data.chunks(split) {
        pieces.push(c, &mut b);
    }
    whole.finish(&mut a);
    pieces.finish(&mut b);
    assert_eq!(a, b);
});
