//! The authorize stage: the route's credentials applied to a planned upstream request.
//! One enum, one variant per way of authenticating — static header/query credentials,
//! AWS SigV4 — so GCP bearer tokens become one more variant, not another `if provider`.

use std::time::SystemTime;

use aigw_model::Provider;
use aigw_model::route::AiProxyConfig;
use aigw_providers::plan::Plan;
use aigw_providers::sigv4::{AwsCredentials, Signer};
use http::header::{self, HeaderName, HeaderValue};

use crate::errors::GatewayError;

pub enum UpstreamAuth {
    /// No route credentials: the client's own (bring your own key) are forwarded.
    None,
    /// `auth.header` / `auth.query`: values compiled once (header values marked sensitive,
    /// query pairs pre-encoded).
    Static { headers: Vec<(HeaderName, HeaderValue)>, query: Vec<(String, String)> },
    /// `auth.aws`: SigV4 over the exact bytes sent.
    SigV4 { creds: AwsCredentials, region: String, service: &'static str },
    /// Configured but not available in this build (requests fail with 501, never silently
    /// without credentials).
    Unavailable(&'static str),
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAuth::None => f.write_str("None"),
            UpstreamAuth::Static { headers, query } => f
                .debug_struct("Static")
                .field("headers", &headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .field("query", &query.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .finish(),
            UpstreamAuth::SigV4 { creds, region, service } => {
                f.debug_struct("SigV4").field("creds", creds).field("region", region).field("service", service).finish()
            }
            UpstreamAuth::Unavailable(what) => write!(f, "Unavailable({what})"),
        }
    }
}

impl UpstreamAuth {
    /// Compiles a provider configuration's `auth` (secrets already revealed).
    pub fn compile(ap: &AiProxyConfig) -> Result<UpstreamAuth, String> {
        if let Some(a) = &ap.auth.aws {
            let region = ap.provider_conf.as_ref().and_then(|p| p.region.clone()).unwrap_or_else(|| "us-east-1".into());
            return Ok(UpstreamAuth::SigV4 {
                creds: AwsCredentials {
                    access_key_id: a.access_key_id.clone(),
                    secret_access_key: a.secret_access_key.clone(),
                    session_token: a.session_token.clone(),
                },
                region,
                service: "bedrock",
            });
        }
        let mut headers = Vec::new();
        for (k, val) in ap.auth.header.iter().flatten() {
            let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| format!("auth.header.{k}: {e}"))?;
            let mut value = HeaderValue::from_str(val).map_err(|_| format!("auth.header.{k}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let query: Vec<(String, String)> = ap
            .auth
            .query
            .iter()
            .flatten()
            .map(|(k, v)| (aigw_providers::target::encode_component(k), aigw_providers::target::encode_component(v)))
            .collect();
        if !headers.is_empty() || !query.is_empty() {
            return Ok(UpstreamAuth::Static { headers, query });
        }
        if ap.auth.gcp.is_some() || ap.provider == Provider::VertexAi {
            return Ok(UpstreamAuth::Unavailable("GCP credentials (auth.gcp) are not implemented yet in this build"));
        }
        Ok(UpstreamAuth::None)
    }

    /// Whether the target brings its own credentials (client ones are then never forwarded).
    pub fn has_credentials(&self) -> bool {
        !matches!(self, UpstreamAuth::None)
    }

    /// Adds the credentials to `plan` (whose host is `authority`).
    pub fn apply(&self, plan: &mut Plan, authority: &str) -> Result<(), GatewayError> {
        match self {
            UpstreamAuth::None => Ok(()),
            UpstreamAuth::Static { headers, query } => {
                for (k, v) in query {
                    plan.url.push(if plan.url.contains('?') { '&' } else { '?' });
                    plan.url.push_str(k);
                    plan.url.push('=');
                    plan.url.push_str(v);
                }
                for (name, value) in headers {
                    plan.headers.insert(name.clone(), value.clone());
                }
                Ok(())
            }
            UpstreamAuth::SigV4 { creds, region, service } => {
                let signer = Signer { creds, region, service };
                let signed = signer
                    .sign(
                        plan.method.as_str(),
                        &plan.url,
                        &[("host", authority), ("content-type", "application/json")],
                        &plan.body,
                        SystemTime::now(),
                    )
                    .map_err(|e| GatewayError::internal(e.to_string()))?;
                plan.headers
                    .insert(header::HOST, HeaderValue::from_str(authority).map_err(|_| GatewayError::internal("bad upstream host"))?);
                for (k, v) in signed {
                    let mut v = HeaderValue::from_str(&v).map_err(|_| GatewayError::internal("bad SigV4 header"))?;
                    v.set_sensitive(k != "x-amz-date");
                    plan.headers.insert(HeaderName::from_static(k), v);
                }
                Ok(())
            }
            UpstreamAuth::Unavailable(what) => Err(GatewayError::not_implemented(*what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(v: serde_json::Value) -> UpstreamAuth {
        let ap: AiProxyConfig = serde_json::from_value(v).unwrap();
        UpstreamAuth::compile(&ap).unwrap()
    }

    #[test]
    fn variants_and_debug_never_show_secrets() {
        let a =
            auth(json!({"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-secret"}, "query": {"key": "q secret"}}}));
        let UpstreamAuth::Static { headers, query } = &a else { panic!("{a:?}") };
        assert_eq!(headers[0].0.as_str(), "authorization");
        assert!(headers[0].1.is_sensitive());
        assert_eq!(query, &vec![("key".to_owned(), "q%20secret".to_owned())]);
        let dbg = format!("{a:?}");
        assert!(dbg.contains("authorization") && !dbg.contains("sk-secret") && !dbg.contains("q%20secret"), "{dbg}");
        let a = auth(json!({"provider": "bedrock", "provider_conf": {"region": "eu-west-1"},
            "auth": {"aws": {"access_key_id": "AKID", "secret_access_key": "SECRET"}}}));
        let dbg = format!("{a:?}");
        assert!(matches!(a, UpstreamAuth::SigV4 { ref region, .. } if region == "eu-west-1"));
        assert!(dbg.contains("AKID") && !dbg.contains("SECRET"), "{dbg}");
        assert!(matches!(auth(json!({"provider": "openai", "auth": {}})), UpstreamAuth::None));
        let gcp = auth(json!({"provider": "gemini", "auth": {"gcp": {}}}));
        assert!(matches!(gcp, UpstreamAuth::Unavailable(_)) && gcp.has_credentials());
    }
}
