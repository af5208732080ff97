//! APISIX `vars` expressions (lua-resty-expr semantics), compiled once per snapshot.
//!
//! Forms: a list of comparisons (all must hold), or `["AND"|"OR"|"!AND"|"!OR", expr, …]`.
//! A comparison is `[var, op, value]` or `[var, "!", op, value]`.

use regex::Regex;
use serde_json::Value;

/// A compile error; `path` is relative to `vars` (e.g. `[0][1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub path: String,
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> ExprError {
    ExprError { path: path.to_owned(), message: message.into() }
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Var {
    Uri,
    RequestUri,
    Host,
    Method,
    Scheme,
    RemoteAddr,
    QueryString,
    /// `arg_NAME`: query argument.
    Arg(String),
    /// `http_NAME`: request header, stored lower-case with `_` turned into `-`.
    Http(String),
    /// `cookie_NAME`.
    Cookie(String),
    /// `post_arg.a.b[0]`: JSON (or form) body path.
    PostArg(Vec<PathSeg>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Regex,
    RegexCi,
    In,
    Has,
}

#[derive(Debug, Clone)]
pub enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    Cmp { var: Var, op: Op, negate: bool, value: Value, regex: Option<Regex> },
}

/// A value read from the request for a variable.
#[derive(Debug, Clone, Copy)]
pub enum VarValue<'a> {
    Str(&'a str),
    Json(&'a Value),
}

/// What a request exposes to expressions.
pub trait VarSource {
    /// Returns the variable's value, or `None` when it is absent. `buf` may be used to hold
    /// a computed string.
    fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>>;
}

impl Var {
    fn parse(s: &str, path: &str) -> Result<Var, ExprError> {
        Ok(match s {
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "host" => Var::Host,
            "method" | "request_method" => Var::Method,
            "scheme" => Var::Scheme,
            "remote_addr" => Var::RemoteAddr,
            "args" | "query_string" => Var::QueryString,
            _ => {
                if let Some(n) = s.strip_prefix("arg_").filter(|n| !n.is_empty()) {
                    Var::Arg(n.to_owned())
                } else if let Some(n) = s.strip_prefix("http_").filter(|n| !n.is_empty()) {
                    Var::Http(n.to_ascii_lowercase().replace('_', "-"))
                } else if let Some(n) = s.strip_prefix("cookie_").filter(|n| !n.is_empty()) {
                    Var::Cookie(n.to_owned())
                } else if let Some(p) = s.strip_prefix("post_arg.") {
                    Var::PostArg(parse_body_path(p).ok_or_else(|| err(path, format!("invalid body path {s:?}")))?)
                } else {
                    return Err(err(
                        path,
                        format!(
                            "unknown variable {s:?}; supported: uri, request_uri, host, method, scheme, remote_addr, args, arg_NAME, http_NAME, cookie_NAME, post_arg.PATH"
                        ),
                    ));
                }
            }
        })
    }

    /// Whether evaluating this variable needs the request body.
    pub fn needs_body(&self) -> bool {
        matches!(self, Var::PostArg(_))
    }
}

/// Parses `a.b[0].c` into segments.
fn parse_body_path(p: &str) -> Option<Vec<PathSeg>> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && out.is_empty() {
            return None;
        }
        if !name.is_empty() {
            out.push(PathSeg::Key(name.to_owned()));
        }
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let idx: usize = rest.get(1..close)?.parse().ok()?;
            out.push(PathSeg::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Looks up a body path in a JSON document.
pub fn lookup<'a>(doc: &'a Value, path: &[PathSeg]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| match seg {
        PathSeg::Key(k) => v.get(k.as_str()),
        PathSeg::Index(i) => v.get(*i),
    })
}

fn parse_op(s: &str, path: &str) -> Result<Op, ExprError> {
    Ok(match s {
        "==" => Op::Eq,
        "~=" => Op::Ne,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "<" => Op::Lt,
        "<=" => Op::Le,
        "~~" => Op::Regex,
        "~*" => Op::RegexCi,
        "in" | "IN" => Op::In,
        "has" | "HAS" => Op::Has,
        _ => {
            return Err(err(
                path,
                format!("unknown operator {s:?}; supported: ==, ~=, >, >=, <, <=, ~~, ~*, in, has, and ! before an operator"),
            ));
        }
    })
}

impl Expr {
    /// Compiles a `vars` value (a list of expressions, or a logical expression).
    pub fn compile(v: &Value) -> Result<Expr, ExprError> {
        let arr = v.as_array().ok_or_else(|| err("", "must be an array of expressions"))?;
        if let Some(Value::String(s)) = arr.first()
            && matches!(s.as_str(), "AND" | "OR" | "!AND" | "!OR")
        {
            return Self::logical(arr, "");
        }
        let mut all = Vec::with_capacity(arr.len());
        for (i, e) in arr.iter().enumerate() {
            all.push(Self::compile_one(e, &format!("[{i}]"))?);
        }
        Ok(Expr::All(all))
    }

    fn logical(arr: &[Value], path: &str) -> Result<Expr, ExprError> {
        let op = arr[0].as_str().unwrap_or_default();
        if arr.len() < 2 {
            return Err(err(path, format!("{op} needs at least one expression")));
        }
        let mut items = Vec::with_capacity(arr.len() - 1);
        for (i, e) in arr.iter().enumerate().skip(1) {
            items.push(Self::compile_one(e, &format!("{path}[{i}]"))?);
        }
        let inner = if op.ends_with("AND") { Expr::All(items) } else { Expr::Any(items) };
        Ok(if op.starts_with('!') { Expr::Not(Box::new(inner)) } else { inner })
    }

    fn compile_one(v: &Value, path: &str) -> Result<Expr, ExprError> {
        let arr = v.as_array().ok_or_else(|| err(path, "expression must be an array"))?;
        match arr.first() {
            Some(Value::String(s)) if matches!(s.as_str(), "AND" | "OR" | "!AND" | "!OR") => return Self::logical(arr, path),
            Some(Value::Array(_)) => {
                // A nested list of expressions means AND.
                let mut all = Vec::new();
                for (i, e) in arr.iter().enumerate() {
                    all.push(Self::compile_one(e, &format!("{path}[{i}]"))?);
                }
                return Ok(Expr::All(all));
            }
            _ => {}
        }
        let var_name = arr.first().and_then(Value::as_str).ok_or_else(|| err(&format!("{path}[0]"), "variable name must be a string"))?;
        let var = Var::parse(var_name, &format!("{path}[0]"))?;
        let (negate, op_idx) = match arr.get(1).and_then(Value::as_str) {
            Some("!") => (true, 2),
            _ => (false, 1),
        };
        let op_str =
            arr.get(op_idx).and_then(Value::as_str).ok_or_else(|| err(&format!("{path}[{op_idx}]"), "operator must be a string"))?;
        let op = parse_op(op_str, &format!("{path}[{op_idx}]"))?;
        if arr.len() != op_idx + 2 {
            return Err(err(path, format!("expected [var, {}op, value]", if negate { "\"!\", " } else { "" })));
        }
        let value = arr[op_idx + 1].clone();
        let vpath = format!("{path}[{}]", op_idx + 1);
        let regex = match op {
            Op::Regex | Op::RegexCi => {
                let pat = value.as_str().ok_or_else(|| err(&vpath, "regex must be a string"))?;
                let pat = if op == Op::RegexCi { format!("(?i){pat}") } else { pat.to_owned() };
                Some(Regex::new(&pat).map_err(|e| err(&vpath, format!("invalid regex: {e}")))?)
            }
            _ => None,
        };
        match op {
            Op::In if !value.is_array() => return Err(err(&vpath, "`in` needs an array")),
            Op::Gt | Op::Ge | Op::Lt | Op::Le if as_number_value(&value).is_none() => {
                return Err(err(&vpath, "comparison needs a number"));
            }
            _ => {}
        }
        Ok(Expr::Cmp { var, op, negate, value, regex })
    }

    /// Whether evaluating needs the request body (`post_arg.*`).
    pub fn needs_body(&self) -> bool {
        match self {
            Expr::All(v) | Expr::Any(v) => v.iter().any(Expr::needs_body),
            Expr::Not(e) => e.needs_body(),
            Expr::Cmp { var, .. } => var.needs_body(),
        }
    }

    pub fn eval(&self, src: &dyn VarSource) -> bool {
        match self {
            Expr::All(v) => v.iter().all(|e| e.eval(src)),
            Expr::Any(v) => v.iter().any(|e| e.eval(src)),
            Expr::Not(e) => !e.eval(src),
            Expr::Cmp { var, op, negate, value, regex } => {
                let actual = src.get(var);
                let r = compare(actual, *op, value, regex.as_ref());
                r != *negate
            }
        }
    }
}

fn as_number_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn actual_number(a: VarValue<'_>) -> Option<f64> {
    match a {
        VarValue::Str(s) => s.trim().parse().ok(),
        VarValue::Json(v) => as_number_value(v),
    }
}

/// Equality with lua-resty-expr's coercions: a number on the right compares numerically,
/// a boolean compares with booleans (or "true"/"false"), a string with the value's text.
fn equals(a: VarValue<'_>, expected: &Value) -> bool {
    match expected {
        Value::Number(n) => actual_number(a).zip(n.as_f64()).is_some_and(|(x, y)| x == y),
        Value::Bool(b) => match a {
            VarValue::Json(Value::Bool(x)) => x == b,
            VarValue::Json(Value::String(s)) => s == if *b { "true" } else { "false" },
            VarValue::Str(s) => s == if *b { "true" } else { "false" },
            _ => false,
        },
        Value::String(s) => match a {
            VarValue::Str(x) => x == s,
            VarValue::Json(Value::String(x)) => x == s,
            VarValue::Json(Value::Number(n)) => n.to_string() == *s,
            VarValue::Json(Value::Bool(b)) => b.to_string() == *s,
            _ => false,
        },
        Value::Null => false,
        other => matches!(a, VarValue::Json(v) if v == other),
    }
}

fn compare(actual: Option<VarValue<'_>>, op: Op, expected: &Value, regex: Option<&Regex>) -> bool {
    let Some(a) = actual else {
        // A missing variable is nil: only "not equal" holds.
        return op == Op::Ne;
    };
    match op {
        Op::Eq => equals(a, expected),
        Op::Ne => !equals(a, expected),
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            let (Some(x), Some(y)) = (actual_number(a), as_number_value(expected)) else { return false };
            match op {
                Op::Gt => x > y,
                Op::Ge => x >= y,
                Op::Lt => x < y,
                _ => x <= y,
            }
        }
        Op::Regex | Op::RegexCi => {
            let text = match a {
                VarValue::Str(s) => s,
                VarValue::Json(Value::String(s)) => s.as_str(),
                _ => return false,
            };
            regex.is_some_and(|r| r.is_match(text))
        }
        Op::In => expected.as_array().is_some_and(|items| items.iter().any(|e| equals(a, e))),
        Op::Has => match a {
            VarValue::Json(Value::Array(items)) => items.iter().any(|i| equals(VarValue::Json(i), expected)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Src {
        strs: HashMap<&'static str, &'static str>,
        body: Value,
    }

    impl VarSource for Src {
        fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>> {
            match var {
                Var::Uri => self.strs.get("uri").map(|s| VarValue::Str(s)),
                Var::Method => self.strs.get("method").map(|s| VarValue::Str(s)),
                Var::Host => self.strs.get("host").map(|s| VarValue::Str(s)),
                Var::Http(h) => self.strs.get(format!("http:{h}").as_str()).map(|s| VarValue::Str(s)),
                Var::Arg(a) => self.strs.get(format!("arg:{a}").as_str()).map(|s| VarValue::Str(s)),
                Var::Cookie(c) => self.strs.get(format!("cookie:{c}").as_str()).map(|s| VarValue::Str(s)),
                Var::PostArg(p) => lookup(&self.body, p).map(VarValue::Json),
                _ => None,
            }
        }
    }

    fn src() -> Src {
        let strs = HashMap::from([
            ("uri", "/v1/chat/completions"),
            ("method", "POST"),
            ("host", "api.example.com"),
            ("http:x-team", "ml"),
            ("http:x-tier", "7"),
            ("arg:debug", "1"),
            ("cookie:session", "abc"),
        ]);
        let body = json!({"model": "openai", "nested": {"name": "deepseek", "n": 5}, "stream": true,
            "tags": ["a", "b"], "messages": [{"role": "system"}, {"role": "user"}]});
        Src { strs, body }
    }

    /// One table drives every case: (vars, expected match).
    fn check(vars: Value, expect: bool) {
        let e = Expr::compile(&vars).unwrap_or_else(|e| panic!("compile {vars}: {e:?}"));
        assert_eq!(e.eval(&src()), expect, "{vars}");
    }

    fn check_err(vars: Value, needle: &str) {
        let e = Expr::compile(&vars).expect_err(&vars.to_string());
        assert!(e.message.contains(needle), "{vars}: {e:?}");
    }

    #[test]
    fn operators_and_sources() {
        check(json!([["post_arg.model", "==", "openai"]]), true);
        check(json!([["post_arg.model", "==", "deepseek"]]), false);
        check(json!([["post_arg.nested.name", "==", "deepseek"]]), true);
        check(json!([["post_arg.messages[1].role", "==", "user"]]), true);
        check(json!([["post_arg.nested.n", "==", 5]]), true);
        check(json!([["post_arg.nested.n", ">", 4], ["post_arg.nested.n", "<=", 5]]), true);
        check(json!([["post_arg.nested.n", ">=", 6]]), false);
        check(json!([["post_arg.nested.n", "<", 5]]), false);
        check(json!([["post_arg.stream", "==", true]]), true);
        check(json!([["post_arg.missing", "~=", "x"]]), true);
        check(json!([["post_arg.missing", "==", "x"]]), false);
        check(json!([["post_arg.model", "~=", "x"]]), true);
        check(json!([["post_arg.tags", "has", "b"]]), true);
        check(json!([["post_arg.tags", "has", "z"]]), false);
        check(json!([["post_arg.model", "in", ["a", "openai"]]]), true);
        check(json!([["uri", "~~", "^/v1/chat"]]), true);
        check(json!([["uri", "~~", "^/V1/CHAT"]]), false);
        check(json!([["uri", "~*", "^/V1/CHAT"]]), true);
        check(json!([["method", "==", "POST"]]), true);
        check(json!([["host", "==", "api.example.com"]]), true);
        check(json!([["http_x_team", "==", "ml"]]), true);
        check(json!([["http_X_Team", "==", "ml"]]), true);
        check(json!([["http_x_tier", ">", 5]]), true);
        check(json!([["arg_debug", "==", "1"]]), true);
        check(json!([["arg_debug", "==", 1]]), true);
        check(json!([["cookie_session", "==", "abc"]]), true);
    }

    #[test]
    fn negation_and_logic() {
        check(json!([["post_arg.model", "!", "==", "openai"]]), false);
        check(json!([["uri", "!", "~~", "^/admin"]]), true);
        check(json!(["OR", ["post_arg.model", "==", "x"], ["post_arg.model", "==", "openai"]]), true);
        check(json!(["AND", ["post_arg.model", "==", "x"], ["post_arg.model", "==", "openai"]]), false);
        check(json!(["!AND", ["post_arg.model", "==", "x"], ["post_arg.model", "==", "openai"]]), true);
        check(json!(["!OR", ["post_arg.model", "==", "openai"]]), false);
        check(json!([["OR", ["method", "==", "GET"], ["method", "==", "POST"]], ["http_x_team", "==", "ml"]]), true);
        check(json!([]), true);
    }

    #[test]
    fn compile_errors() {
        check_err(json!({"a": 1}), "array");
        check_err(json!([["post_arg.model", "===", "x"]]), "unknown operator");
        check_err(json!([["nope", "==", "x"]]), "unknown variable");
        check_err(json!([["uri", "~~", "("]]), "invalid regex");
        check_err(json!([["uri", "in", "x"]]), "needs an array");
        check_err(json!([["uri", ">", "abc"]]), "needs a number");
        check_err(json!([["uri", "=="]]), "expected [var");
        check_err(json!([[1, "==", "x"]]), "variable name");
        check_err(json!([["post_arg.", "==", "x"]]), "invalid body path");
        check_err(json!(["OR"]), "at least one");
        let e = Expr::compile(&json!([["uri", "==", "/"], ["uri", "bad", "/"]])).unwrap_err();
        assert_eq!(e.path, "[1][1]");
    }

    #[test]
    fn needs_body() {
        assert!(Expr::compile(&json!([["post_arg.model", "==", "x"]])).unwrap().needs_body());
        assert!(!Expr::compile(&json!([["uri", "==", "x"]])).unwrap().needs_body());
    }
}
