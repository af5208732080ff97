//! The request as `vars` expressions see it (`uri`, `arg_*`, `http_*`, `cookie_*`,
//! `post_arg.*`, …). Query arguments are decoded lazily, once.

use aigw_model::vars::{Var, VarSource, VarValue, lookup};
use http::header::{self, HeaderMap};
use serde_json::Value;

/// Request facts exposed to `vars`.
pub struct RequestVars<'a> {
    pub path: &'a str,
    pub request_uri: &'a str,
    pub query: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    pub remote: String,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a Value>,
    pub decoded: std::cell::OnceCell<Vec<(String, String)>>,
}

pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(()) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RequestVars<'_> {
    fn args(&self) -> &[(String, String)] {
        self.decoded.get_or_init(|| {
            self.query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(p), String::new()),
                })
                .collect()
        })
    }
}

impl VarSource for RequestVars<'_> {
    fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>> {
        match var {
            Var::Uri => Some(VarValue::Str(self.path)),
            Var::RequestUri => Some(VarValue::Str(self.request_uri)),
            Var::Host => Some(VarValue::Str(self.host)),
            Var::Method => Some(VarValue::Str(self.method)),
            Var::Scheme => Some(VarValue::Str(self.scheme)),
            Var::RemoteAddr => Some(VarValue::Str(&self.remote)),
            Var::QueryString => Some(VarValue::Str(self.query)),
            Var::Arg(name) => self.args().iter().find(|(k, _)| k == name).map(|(_, v)| VarValue::Str(v)),
            Var::Http(name) => self.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(VarValue::Str),
            Var::Cookie(name) => self
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| VarValue::Str(v)),
            Var::PostArg(path) => self.body.and_then(|b| lookup(b, path)).map(VarValue::Json),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::pct_decode("a%20b+c%2Fd%zz%"), "a b c/d%zz%");
    }
}
