//! The authorize stage: the route's credentials applied to a planned upstream request.
//! One enum, one variant per way of authenticating — static header/query credentials,
//! AWS SigV4, GCP OAuth bearer tokens — not another `if provider`.
//!
//! Only the GCP variant awaits (its token source answers from memory unless a token
//! must be fetched); static credentials and SigV4 complete without awaiting anything.

use std::time::SystemTime;

use aigw_gcp_auth::{AccessToken, Credential, GcpAuth, TokenSettings, TokenSource, TtlPolicy};
use aigw_model::route::AiProxyConfig;
use aigw_providers::plan::Plan;
use aigw_providers::sigv4::{AwsCredentials, Signer};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::errors::GatewayError;

/// Reads the proxy's environment (injectable for tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub enum UpstreamAuth {
    /// No route credentials: the client's own (bring your own key) are forwarded.
    None,
    /// `auth.header` / `auth.query`: values compiled once (header values marked sensitive,
    /// query pairs pre-encoded).
    Static { headers: Vec<(HeaderName, HeaderValue)>, query: Vec<(String, String)> },
    /// `auth.aws`: SigV4 over the exact bytes sent.
    SigV4 { creds: AwsCredentials, region: String, service: &'static str },
    /// `auth.gcp`: `Authorization: Bearer <OAuth access token>` from the credential's token
    /// source (shared by every route with the same credential and TTL settings), over any
    /// static `auth.header` / `auth.query` (e.g. `x-goog-user-project`).
    Gcp { source: TokenSource, statics: Box<UpstreamAuth> },
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
            UpstreamAuth::Gcp { source, statics } => f.debug_struct("Gcp").field("who", &source.who()).field("statics", statics).finish(),
        }
    }
}

/// Credentials that cannot be used as given (a header value, a service account).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl UpstreamAuth {
    /// Compiles a provider configuration's `auth` (secrets already revealed). `auth.gcp`
    /// resolves its credential now (explicit JSON, `GCP_SERVICE_ACCOUNT`,
    /// `GOOGLE_APPLICATION_CREDENTIALS`, else the metadata server, read through `env`) and
    /// takes its token source from `gcp`; a credential that does not resolve rejects the
    /// config.
    pub fn compile(ap: &AiProxyConfig, gcp: &GcpAuth, env: Env<'_>) -> Result<UpstreamAuth, AuthError> {
        Self::compile_inner(ap, gcp, env).map_err(AuthError)
    }

    fn compile_inner(ap: &AiProxyConfig, gcp: &GcpAuth, env: Env<'_>) -> Result<UpstreamAuth, String> {
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
        let statics = if !headers.is_empty() || !query.is_empty() { UpstreamAuth::Static { headers, query } } else { UpstreamAuth::None };
        let Some(g) = &ap.auth.gcp else { return Ok(statics) };
        let (cred, origin) =
            Credential::resolve(g.service_account_json.as_deref(), env).map_err(|e| format!("auth.gcp.service_account_json: {e}"))?;
        tracing::debug!(who = %cred.who(), origin = ?origin, "gcp credential resolved");
        let settings = TokenSettings { scopes: None, ttl: TtlPolicy { expire_early_secs: g.expire_early_secs, max_ttl: g.max_ttl } };
        Ok(UpstreamAuth::Gcp { source: gcp.source(cred, settings), statics: Box::new(statics) })
    }

    /// Whether the target brings its own credentials (client ones are then never forwarded).
    pub fn has_credentials(&self) -> bool {
        !matches!(self, UpstreamAuth::None)
    }

    /// The authorize stage: adds the credentials to `plan` (whose host is `authority`).
    /// Returns the GCP token used (for [`UpstreamAuth::reauthorize_after`]); None for
    /// every other variant, which completes without awaiting.
    pub async fn authorize(&self, plan: &mut Plan, authority: &str) -> Result<Option<AccessToken>, GatewayError> {
        let UpstreamAuth::Gcp { source, statics } = self else {
            return self.apply(plan, authority).map(|()| None);
        };
        statics.apply(plan, authority)?;
        let token = source.token().await.map_err(|e| GatewayError::internal(e.to_string()))?;
        set_bearer(&mut plan.headers, &token)?;
        Ok(Some(token))
    }

    /// After an answer with `status` to a request authorized with the GCP token `used`:
    /// on 401, the token is dropped everywhere (this process and aigw-token-cache) and
    /// `headers` get a fresh one; `true` means "send once more with `headers`". Nothing
    /// has reached the client yet when this runs. Never true twice for one attempt: the
    /// caller retries once.
    pub async fn reauthorize_after(
        &self,
        status: StatusCode,
        used: Option<&AccessToken>,
        headers: &mut HeaderMap,
    ) -> Result<bool, GatewayError> {
        let (UpstreamAuth::Gcp { source, .. }, Some(used), StatusCode::UNAUTHORIZED) = (self, used, status) else {
            return Ok(false);
        };
        if !source.reject(used).await {
            return Ok(false);
        }
        let fresh = source.token().await.map_err(|e| GatewayError::internal(e.to_string()))?;
        if fresh.same_token(used) {
            return Ok(false);
        }
        set_bearer(headers, &fresh)?;
        Ok(true)
    }

    /// Static credentials and SigV4: no await, no allocation beyond the headers added.
    fn apply(&self, plan: &mut Plan, authority: &str) -> Result<(), GatewayError> {
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
            UpstreamAuth::Gcp { .. } => Err(GatewayError::internal("gcp credentials are applied by authorize()")),
        }
    }
}

/// `Authorization: Bearer <token>`, marked sensitive; replaces any other Authorization.
fn set_bearer(headers: &mut HeaderMap, token: &AccessToken) -> Result<(), GatewayError> {
    let v = token.authorization_header().ok_or_else(|| GatewayError::internal("the gcp access token is not a valid header value"))?;
    headers.insert(header::AUTHORIZATION, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY_A: &str = include_str!("../../../libs/aigw-testkit/testdata/gcp-TEST-ONLY-sa-key-a.pem");

    fn sa_json(email: &str) -> String {
        json!({"type": "service_account", "private_key": KEY_A, "client_email": email, "token_uri": "http://127.0.0.1:1/token"}).to_string()
    }

    fn compile_with(v: serde_json::Value, gcp: &GcpAuth, env: Env<'_>) -> Result<UpstreamAuth, String> {
        let ap: AiProxyConfig = serde_json::from_value(v).unwrap();
        UpstreamAuth::compile(&ap, gcp, env).map_err(|e| e.0)
    }

    fn auth(v: serde_json::Value) -> UpstreamAuth {
        compile_with(v, &GcpAuth::new(Default::default()).unwrap(), &|_| None).unwrap()
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
        // vertex-ai without auth.gcp: the client's own credentials, as APISIX.
        let v = auth(json!({"provider": "vertex-ai", "provider_conf": {"project_id": "p", "region": "r"}, "auth": {}}));
        assert!(matches!(v, UpstreamAuth::None));
    }

    #[test]
    fn gcp_on_any_bearer_provider_resolves_its_credential_in_order() {
        let gcp = GcpAuth::new(Default::default()).unwrap();
        // Explicit JSON, on gemini's OpenAI-compatible endpoint, over a static header.
        let a = compile_with(
            json!({"provider": "gemini", "auth": {"gcp": {"service_account_json": sa_json("explicit@p.iam")}, "header": {"x-goog-user-project": "billing"}}}),
            &gcp,
            &|_| None,
        )
        .unwrap();
        assert!(a.has_credentials());
        let dbg = format!("{a:?}");
        assert!(dbg.contains("explicit@p.iam") && dbg.contains("x-goog-user-project") && !dbg.contains("MII"), "{dbg}");
        let UpstreamAuth::Gcp { statics, .. } = &a else { panic!("{a:?}") };
        assert!(matches!(**statics, UpstreamAuth::Static { .. }));
        // GCP_SERVICE_ACCOUNT, then the metadata server named by GCE_METADATA_HOST.
        let env_sa = sa_json("env@p.iam");
        let env = |k: &str| (k == "GCP_SERVICE_ACCOUNT").then(|| env_sa.clone());
        let a = compile_with(json!({"provider": "openai", "auth": {"gcp": {}}}), &gcp, &env).unwrap();
        assert!(format!("{a:?}").contains("env@p.iam"));
        let md = |k: &str| (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:9".to_owned());
        let a = compile_with(json!({"provider": "openai", "auth": {"gcp": {}}}), &gcp, &md).unwrap();
        assert!(format!("{a:?}").contains("metadata server http://127.0.0.1:9"), "{a:?}");
        // A broken source rejects the config, naming the problem and never the key.
        let bad = |k: &str| (k == "GCP_SERVICE_ACCOUNT").then(|| json!({"private_key": KEY_A}).to_string());
        let e = compile_with(json!({"provider": "openai", "auth": {"gcp": {}}}), &gcp, &bad).unwrap_err();
        assert!(e.contains("GCP_SERVICE_ACCOUNT: lacks client_email") && !e.contains("MII"), "{e}");
        // Equal credentials and settings share one token source; other TTL settings do not.
        let a1 = compile_with(json!({"provider": "openai", "auth": {"gcp": {"service_account_json": sa_json("s@p")}}}), &gcp, &|_| None)
            .unwrap();
        let a2 = compile_with(json!({"provider": "openai", "auth": {"gcp": {"service_account_json": sa_json("s@p")}}}), &gcp, &|_| None)
            .unwrap();
        let a3 = compile_with(
            json!({"provider": "openai", "auth": {"gcp": {"service_account_json": sa_json("s@p"), "max_ttl": 60}}}),
            &gcp,
            &|_| None,
        )
        .unwrap();
        let src = |a: &UpstreamAuth| match a {
            UpstreamAuth::Gcp { source, .. } => source.clone(),
            _ => panic!(),
        };
        assert!(src(&a1).same_source(&src(&a2)) && !src(&a1).same_source(&src(&a3)));
    }
}
