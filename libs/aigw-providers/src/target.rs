//! Where a request goes: a provider configuration compiled once when config arrives
//! (`override.endpoint` parsed, origin resolved), shared by every request of a route (or
//! of an `ai-proxy-multi` instance).

use std::sync::Arc;

use aigw_llm::protocol::Protocol;
use aigw_model::route::AiProxyConfig;
use http::Uri;

use crate::table::{self, Conversion, Unreachable};

/// `override.endpoint`, parsed.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path and query as given; None for a bare origin (`https://host` or `https://host/`),
    /// which means "this host, the provider's default path".
    pub path_and_query: Option<String>,
}

impl Endpoint {
    pub fn parse(ep: &str) -> Result<Endpoint, TargetError> {
        let uri: Uri = ep.parse().map_err(|e| TargetError(format!("override.endpoint: {e}")))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or_else(|| TargetError("override.endpoint: no scheme".into()))?;
        let authority = parts.authority.ok_or_else(|| TargetError("override.endpoint: no host".into()))?;
        let path_and_query = parts.path_and_query.map(|p| p.as_str().to_owned()).filter(|p| p != "/" && !p.is_empty());
        Ok(Endpoint { scheme, authority, path_and_query })
    }
}

/// A provider configuration that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// One upstream target: the provider configuration plus what is derived from it once.
#[derive(Debug, Clone)]
pub struct Target {
    /// Provider, provider_conf, options, override (credentials are the authorize stage's).
    pub conf: Arc<AiProxyConfig>,
    pub endpoint: Option<Endpoint>,
    /// `scheme://authority` requests go to.
    pub origin: String,
    /// `host[:port]` of the origin (Host header and SigV4).
    pub authority: String,
    /// The target brings its own credentials: client credential headers are never forwarded.
    pub has_credentials: bool,
    /// The client protocols this configuration serves ([`table::supported`]), decided here
    /// once, never per request.
    pub supported: Vec<Protocol>,
}

impl Target {
    pub fn compile(conf: Arc<AiProxyConfig>, has_credentials: bool) -> Result<Target, TargetError> {
        let endpoint = match conf.override_.as_ref().and_then(|o| o.endpoint.as_deref()) {
            Some(ep) => Some(Endpoint::parse(ep)?),
            None => None,
        };
        let origin = match &endpoint {
            Some(ep) => format!("{}://{}", ep.scheme, ep.authority),
            None => crate::table::default_origin(conf.provider, conf.provider_conf.as_ref())
                .ok_or_else(|| TargetError(format!("provider {} needs override.endpoint", conf.provider.as_str())))?,
        };
        let authority = origin.split_once("://").map(|(_, a)| a.to_owned()).unwrap_or_default();
        let path = endpoint.as_ref().and_then(|e| e.path_and_query.as_deref());
        let supported = table::supported(conf.provider, conf.provider_conf.as_ref(), path);
        if supported.is_empty() {
            // Validation refuses these first, naming the field (aigw-model's
            // validate_ai_proxy); this keeps a target that would refuse every request out
            // of a compiled config however it got there.
            let why = table::CLIENT_PROTOCOLS
                .iter()
                .find_map(|p| table::route_to(conf.provider, *p, conf.provider_conf.as_ref(), path).err().and_then(Unreachable::reason))
                .unwrap_or("no protocol reaches it");
            return Err(TargetError(format!("provider {} can serve no request on this configuration: {why}", conf.provider.as_str())));
        }
        Ok(Target { conf, endpoint, origin, authority, has_credentials, supported })
    }

    /// How a client protocol reaches this target ([`table::route_to`] on its configuration).
    pub fn route(&self, proto: Protocol) -> Result<Conversion, Unreachable> {
        table::route_to(self.conf.provider, proto, self.conf.provider_conf.as_ref(), self.endpoint_path_and_query())
    }

    fn endpoint_path_and_query(&self) -> Option<&str> {
        self.endpoint.as_ref().and_then(|e| e.path_and_query.as_deref())
    }

    /// `override.endpoint`'s path and query when they are the URL of `upstream` requests
    /// ([`table::endpoint_path_for`]); None: the provider's path (or the client's, for
    /// passthrough).
    pub fn endpoint_path(&self, upstream: Protocol) -> Option<&str> {
        table::endpoint_path_for(self.conf.provider, upstream, self.endpoint_path_and_query())
    }

    /// [`Target::supported`] as a refusal lists it (`openai-chat, anthropic-messages`).
    pub fn supported_names(&self) -> String {
        self.supported.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    }
}

pub use crate::encode::{decode_component, encode_component};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Arc<AiProxyConfig> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn endpoints_and_origins() {
        let t = Target::compile(
            conf(json!({"provider": "openai-compatible", "auth": {}, "override": {"endpoint": "http://127.0.0.1:8080/v1/chat/completions?api-version=1"}})),
            false,
        )
        .unwrap();
        let ep = t.endpoint.as_ref().unwrap();
        assert_eq!((ep.scheme.as_str(), ep.authority.as_str()), ("http", "127.0.0.1:8080"));
        assert_eq!(ep.path_and_query.as_deref(), Some("/v1/chat/completions?api-version=1"));
        assert_eq!((t.origin.as_str(), t.authority.as_str()), ("http://127.0.0.1:8080", "127.0.0.1:8080"));
        for bare in ["https://h.example", "https://h.example/"] {
            let t = Target::compile(conf(json!({"provider": "openai", "auth": {}, "override": {"endpoint": bare}})), false).unwrap();
            assert!(t.endpoint.unwrap().path_and_query.is_none(), "{bare}");
        }
        let t = Target::compile(conf(json!({"provider": "openai", "auth": {}})), false).unwrap();
        assert_eq!(t.origin, "https://api.openai.com");
        let e = Target::compile(conf(json!({"provider": "openai-compatible", "auth": {}})), false).unwrap_err();
        assert!(e.0.contains("needs override.endpoint"), "{e}");
    }

    #[test]
    fn percent_coding() {
        assert_eq!(encode_component("arn:aws:bedrock:us-east-1:1:x/y z"), "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ax%2Fy%20z");
        assert_eq!(decode_component("a%20b+c%2Fd%zz%"), "a b c/d%zz%");
        assert_eq!(decode_component(&encode_component("é/ü:1")), "é/ü:1");
    }
}
