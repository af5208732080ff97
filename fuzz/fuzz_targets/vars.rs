//! `vars` expressions: any JSON compiles or errors; compiled ones evaluate without panicking.
#![no_main]
use aigw_model::vars::{Expr, Var, VarSource, VarValue, lookup};
use libfuzzer_sys::fuzz_target;

struct Src(serde_json::Value);

impl VarSource for Src {
    fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>> {
        match var {
            Var::PostArg(p) => lookup(&self.0, p).map(VarValue::Json),
            Var::Uri => Some(VarValue::Str("/v1/chat/completions")),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(e) = Expr::compile(&v)
    {
        e.eval(&Src(v.clone()));
    }
});
