//! Where credentials come from, in APISIX's order, then Application Default Credentials:
//!
//! 1. `auth.gcp.service_account_json` (the route's secret field);
//! 2. the `GCP_SERVICE_ACCOUNT` environment variable (APISIX's name, a JSON string);
//! 3. `GOOGLE_APPLICATION_CREDENTIALS`: path of a service-account key file;
//! 4. the GCE metadata server (`GCE_METADATA_HOST` overrides `metadata.google.internal`).
//!
//! Resolution reads the environment and the key file once, when config is compiled;
//! the metadata server is only asked when a token is needed.

use std::sync::Arc;

use crate::account::ServiceAccount;
use crate::error::GcpAuthError;

pub const ENV_SERVICE_ACCOUNT: &str = "GCP_SERVICE_ACCOUNT";
pub const ENV_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";
pub const ENV_METADATA_HOST: &str = "GCE_METADATA_HOST";
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// Largest key file read from `GOOGLE_APPLICATION_CREDENTIALS`.
const MAX_KEY_FILE: u64 = 1 << 20;

/// A resolved credential. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Credential {
    ServiceAccount(Arc<ServiceAccount>),
    /// The metadata server at `base_url` (`http://host[:port]`), default service account.
    Metadata {
        base_url: String,
    },
}

/// Which rule of the order a credential came from (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Explicit,
    EnvServiceAccount,
    ApplicationCredentialsFile,
    MetadataServer,
}

impl Credential {
    /// Resolves in the documented order. `explicit` is the route's
    /// `service_account_json` (already decrypted and `$env://`-resolved; empty = unset);
    /// `env` reads the process environment (injectable for tests).
    ///
    /// Errors: an explicit or `GCP_SERVICE_ACCOUNT` JSON that is invalid, or an unusable
    /// `GOOGLE_APPLICATION_CREDENTIALS` file. A broken higher-priority source is an error,
    /// not a reason to fall through to the next one.
    pub fn resolve(explicit: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<(Credential, Origin), GcpAuthError> {
        if let Some(json) = explicit.filter(|s| !s.trim().is_empty()) {
            return Ok((Credential::from_json(json)?, Origin::Explicit));
        }
        if let Some(json) = env(ENV_SERVICE_ACCOUNT).filter(|s| !s.trim().is_empty()) {
            let sa = ServiceAccount::from_json(&json).map_err(|e| match e {
                GcpAuthError::InvalidServiceAccount { reason } => {
                    GcpAuthError::InvalidServiceAccount { reason: format!("{ENV_SERVICE_ACCOUNT}: {reason}") }
                }
                other => other,
            })?;
            return Ok((Credential::ServiceAccount(Arc::new(sa)), Origin::EnvServiceAccount));
        }
        if let Some(path) = env(ENV_APPLICATION_CREDENTIALS).filter(|s| !s.is_empty()) {
            return Ok((Credential::from_key_file(&path)?, Origin::ApplicationCredentialsFile));
        }
        Ok((Credential::metadata_from_env(env), Origin::MetadataServer))
    }

    /// A service-account JSON given directly.
    pub fn from_json(json: &str) -> Result<Credential, GcpAuthError> {
        Ok(Credential::ServiceAccount(Arc::new(ServiceAccount::from_json(json)?)))
    }

    fn from_key_file(path: &str) -> Result<Credential, GcpAuthError> {
        let err = |reason: String| GcpAuthError::CredentialsFile { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_KEY_FILE {
            return Err(err("file is larger than 1 MiB".into()));
        }
        let json = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        ServiceAccount::from_json(&json).map(|sa| Credential::ServiceAccount(Arc::new(sa))).map_err(|e| match e {
            GcpAuthError::InvalidServiceAccount { reason } => err(format!("invalid service account key: {reason}")),
            other => other,
        })
    }

    /// The metadata server named by `GCE_METADATA_HOST` (host[:port], or a URL), else
    /// `metadata.google.internal`.
    pub fn metadata_from_env(env: &dyn Fn(&str) -> Option<String>) -> Credential {
        let host = env(ENV_METADATA_HOST).filter(|h| !h.trim().is_empty()).unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
        let host = host.trim().trim_end_matches('/');
        let base_url = if host.starts_with("http://") || host.starts_with("https://") { host.to_owned() } else { format!("http://{host}") };
        Credential::Metadata { base_url }
    }

    /// Who the credential is, for messages: the `client_email`, or the metadata server's
    /// default service account.
    pub fn who(&self) -> String {
        match self {
            Credential::ServiceAccount(sa) => sa.client_email().to_owned(),
            Credential::Metadata { base_url } => format!("the default service account of the metadata server {base_url}"),
        }
    }

    /// Scopes used when the caller names none: the JSON's `scope`, else cloud-platform.
    pub fn default_scopes(&self) -> Vec<String> {
        match self {
            Credential::ServiceAccount(sa) if sa.scopes().is_some() => sa.scopes().unwrap_or_default().to_vec(),
            _ => vec![crate::CLOUD_PLATFORM_SCOPE.to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY_A: &str = include_str!("../../aigw-testkit/testdata/gcp-TEST-ONLY-sa-key-a.pem");

    fn sa_json(email: &str) -> String {
        serde_json::json!({"type": "service_account", "private_key": KEY_A, "client_email": email, "token_uri": "http://127.0.0.1:1/token"})
            .to_string()
    }

    fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        move |k| m.get(k).cloned()
    }

    fn who(r: Result<(Credential, Origin), GcpAuthError>) -> (String, Origin) {
        let (c, o) = r.unwrap();
        (c.who(), o)
    }

    #[test]
    fn order_explicit_env_file_metadata() {
        let dir = std::env::temp_dir().join(format!("aigw-gcp-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key.json");
        std::fs::write(&file, sa_json("file@p.iam")).unwrap();
        let file = file.to_string_lossy().into_owned();
        let all = env(&[
            (ENV_SERVICE_ACCOUNT, sa_json("env@p.iam")),
            (ENV_APPLICATION_CREDENTIALS, file.clone()),
            (ENV_METADATA_HOST, "127.0.0.1:9".into()),
        ]);
        assert_eq!(who(Credential::resolve(Some(&sa_json("explicit@p.iam")), &all)), ("explicit@p.iam".into(), Origin::Explicit));
        assert_eq!(who(Credential::resolve(Some(""), &all)), ("env@p.iam".into(), Origin::EnvServiceAccount));
        let no_env = env(&[(ENV_APPLICATION_CREDENTIALS, file.clone()), (ENV_METADATA_HOST, "127.0.0.1:9".into())]);
        assert_eq!(who(Credential::resolve(None, &no_env)), ("file@p.iam".into(), Origin::ApplicationCredentialsFile));
        let md = env(&[(ENV_METADATA_HOST, "127.0.0.1:9".into())]);
        let (c, o) = Credential::resolve(None, &md).unwrap();
        assert_eq!(o, Origin::MetadataServer);
        assert!(matches!(c, Credential::Metadata { ref base_url } if base_url == "http://127.0.0.1:9"));
        let (c, _) = Credential::resolve(None, &env(&[])).unwrap();
        assert!(matches!(c, Credential::Metadata { ref base_url } if base_url == "http://metadata.google.internal"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_broken_source_is_an_error_not_a_fall_through() {
        let e = Credential::resolve(None, &env(&[(ENV_SERVICE_ACCOUNT, "{\"client_email\": 1}".into())])).unwrap_err();
        assert!(e.to_string().contains("GCP_SERVICE_ACCOUNT: client_email must be a string"), "{e}");
        let e = Credential::resolve(None, &env(&[(ENV_APPLICATION_CREDENTIALS, "/nonexistent/key.json".into())])).unwrap_err();
        assert!(e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS (/nonexistent/key.json): cannot read"), "{e}");
        assert!(Credential::resolve(Some("{"), &env(&[])).unwrap_err().is_invalid_credential());
    }
}
