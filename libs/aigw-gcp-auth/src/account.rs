//! Service-account JSON: strict validation (shared with config validation through
//! `aigw_model::gcp`) and the RS256 JWT of the OAuth 2.0 JWT-bearer grant
//! (wire-formats §7.2), signed with `ring`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::GcpAuthError;

/// The scope used when neither the caller nor the service-account JSON names one.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long a signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// A loaded service account: the parsed key and the fields the grant needs. `Debug`
/// never shows the key.
pub struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    project_id: Option<String>,
    scopes: Option<Vec<String>>,
    key: RsaKeyPair,
    /// SHA-256 of the JSON as given: the credential's identity in cache keys.
    identity: [u8; 32],
    /// The JSON as given, for `aigw-token-cache` requests (its `credential` field).
    json: Arc<str>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Checks a service-account JSON the way [`ServiceAccount::from_json`] does, for config
/// validation: `Err` names the problem and never echoes the key.
pub fn validate_service_account_json(json: &str) -> Result<(), GcpAuthError> {
    aigw_model::gcp::validate_service_account_json(json).map_err(|e| GcpAuthError::invalid(e.0))
}

impl ServiceAccount {
    /// Parses and checks a service-account JSON: it must parse, be an object of
    /// `"type": "service_account"` (when `type` is present), and carry `client_email`,
    /// `private_key` (RSA, PKCS#8 or PKCS#1 PEM, and it must load) and an http(s)
    /// `token_uri`.
    pub fn from_json(json: &str) -> Result<ServiceAccount, GcpAuthError> {
        // One parser for config validation and signing (`aigw_model::gcp`).
        let k = aigw_model::gcp::parse_service_account(json).map_err(|e| GcpAuthError::invalid(e.0))?;
        Ok(ServiceAccount {
            client_email: k.client_email,
            private_key_id: k.private_key_id,
            token_uri: k.token_uri,
            project_id: k.project_id,
            scopes: k.scopes,
            key: k.key,
            identity: Sha256::digest(json.as_bytes()).into(),
            json: Arc::from(json),
        })
    }

    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The JSON's own `scope`, when it has one.
    pub fn scopes(&self) -> Option<&[String]> {
        self.scopes.as_deref()
    }

    /// SHA-256 of the JSON as given (the credential's identity; never the key in clear).
    pub fn identity(&self) -> [u8; 32] {
        self.identity
    }

    /// The JSON as given. Secret: send it only to `aigw-token-cache`, never log it.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The signed assertion for the JWT-bearer grant: header `{"alg":"RS256","typ":"JWT"
    /// [,"kid"]}`, claims `iss`=client_email, `scope`, `aud`=token_uri, `iat`=now,
    /// `exp`=now+3600. Secret (valid for an exchange for an hour).
    pub fn sign_assertion(&self, scopes: &[String], now_secs: u64) -> Result<String, GcpAuthError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": scopes.join(" "),
            "aud": self.token_uri,
            "iat": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig).map_err(|_| {
            GcpAuthError::Mint {
                who: self.client_email.clone(),
                endpoint: crate::error::endpoint_label(&self.token_uri),
                status: None,
                problem: "could not be asked: signing the JWT failed".into(),
            }
        })?;
        Ok(format!("{signing_input}.{}", B64URL.encode(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const KEY_A: &str = include_str!("../../aigw-testkit/testdata/gcp-TEST-ONLY-sa-key-a.pem");

    fn sa(extra: Value) -> String {
        let mut v = json!({"type": "service_account", "project_id": "p", "private_key_id": "kid1", "private_key": KEY_A,
            "client_email": "gw@p.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"});
        for (k, x) in extra.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v.to_string()
    }

    /// The cases live with the parser (`aigw_model::gcp`); here: the error type and its
    /// prefix, and that the key is never echoed.
    #[test]
    fn invalid_jsons_are_typed_errors_without_the_key() {
        for (json, fragment) in [
            ("{not json".to_owned(), "does not parse as JSON"),
            (sa(json!({"client_email": null})), "lacks client_email"),
            (sa(json!({"private_key": "not a pem"})), "private_key is not a PEM private key"),
        ] {
            let e = ServiceAccount::from_json(&json).unwrap_err();
            assert!(e.is_invalid_credential());
            let m = e.to_string();
            assert!(m.starts_with("invalid gcp service account json: ") && m.contains(fragment), "{m}");
            assert!(!m.contains("MII"), "{m}");
            assert_eq!(validate_service_account_json(&json).unwrap_err(), e);
        }
        assert!(validate_service_account_json(&sa(json!({}))).is_ok());
    }

    #[test]
    fn scope_from_string_or_array() {
        let a = ServiceAccount::from_json(&sa(json!({"scope": "a b"}))).unwrap();
        assert_eq!(a.scopes().unwrap(), ["a", "b"]);
        assert!(ServiceAccount::from_json(&sa(json!({}))).unwrap().scopes().is_none());
    }

    #[test]
    fn assertion_has_the_grant_claims_and_verifies() {
        let a = ServiceAccount::from_json(&sa(json!({}))).unwrap();
        let jwt = a.sign_assertion(&[CLOUD_PLATFORM_SCOPE.to_owned()], 1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "kid": "kid1"}));
        let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"iss": "gw@p.iam.gserviceaccount.com", "scope": CLOUD_PLATFORM_SCOPE,
                   "aud": "https://oauth2.googleapis.com/token", "iat": 1_700_000_000u64, "exp": 1_700_003_600u64})
        );
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, a.key.public().as_ref());
        let sig = B64URL.decode(parts[2]).unwrap();
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).expect("signature verifies");
        assert!(public.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn debug_redacts_the_key() {
        let a = ServiceAccount::from_json(&sa(json!({}))).unwrap();
        let d = format!("{a:?}");
        assert!(d.contains("<redacted>") && d.contains("gw@p.iam"));
        assert!(!d.contains("MII"));
    }
}
