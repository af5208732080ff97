//! The request as `vars` expressions see it (`uri`, `arg_*`, `http_*`, `cookie_*`,
//! `post_arg.*`, …). Query arguments are decoded lazily, once.

use aigw_model::vars::{Var, VarSource, VarValue, lookup};
use aigw_providers::target::decode_component;
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
    pub remote: std::net::IpAddr,
    pub headers: &'a HeaderMap,
    pub body: Option<&'a Value>,
    /// A JSON body: its tree is parsed only when an expression reads `post_arg.*`.
    pub json: Option<&'a aigw_llm::body::RawBody>,
    pub decoded: std::cell::OnceCell<Vec<(String, String)>>,
    /// `remote` as text, made only when an expression asks for it.
    pub remote_text: std::cell::OnceCell<String>,
}

impl RequestVars<'_> {
    fn args(&self) -> &[(String, String)] {
        self.decoded.get_or_init(|| {
            self.query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode_component(k), decode_component(v)),
                    None => (decode_component(p), String::new()),
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
            Var::RemoteAddr => Some(VarValue::Str(self.remote_text.get_or_init(|| self.remote.to_string()))),
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
            Var::PostArg(path) => self.json.map(|j| j.tree()).or(self.body).and_then(|b| lookup(b, path)).map(VarValue::Json),
        }
    }
}
