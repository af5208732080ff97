//! Routes: arbitrary bytes → JSON → validation → compilation never panic, and what
//! validates either compiles or fails with a reason.
#![no_main]
use aigw_proxy::compiled::{CompileCtx, compile_route};
use aigw_proxy::upstream::Upstreams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let validated = aigw_model::RouteSpec::from_json(&v);
    let ups = Upstreams::default();
    let compiled = compile_route(&v, &CompileCtx::bare(&ups));
    // Compilation validates too: it cannot accept what validation rejects.
    if validated.is_err() {
        assert!(compiled.is_err());
    }
    // A routes file holding it goes through the same path.
    let file = serde_json::json!({ "routes": [v] }).to_string();
    let _ = aigw_model::snapshot::parse_routes_file(&file, &|_| None);
});
