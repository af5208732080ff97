//! Whole-answer observation: the fast path (`usage::observe_json`) and its oracle (the
//! scanner before it) give the same observation for any bytes — JSON or not, cut short,
//! with keys inside strings, odd types, deep nesting.
#![no_main]
use aigw_llm::usage::{observe_json, oracle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(observe_json(data), oracle::observe_json(data));
    // Valid JSON, re-serialised compactly and pretty: the shapes answers have.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for d in [serde_json::to_vec(&v).unwrap(), serde_json::to_vec_pretty(&v).unwrap()] {
            assert_eq!(observe_json(&d), oracle::observe_json(&d));
        }
    }
});
