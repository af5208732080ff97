//! Service-account JSON: strict validation (usable at config time) and the RS256 JWT
//! of the OAuth 2.0 JWT-bearer grant (wire-formats §7.2), signed with `ring`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
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
    ServiceAccount::from_json(json).map(|_| ())
}

fn string_field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, GcpAuthError> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(GcpAuthError::invalid(format!("lacks {name}"))),
        Some(Value::String(s)) if s.trim().is_empty() => Err(GcpAuthError::invalid(format!("{name} is empty"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(GcpAuthError::invalid(format!("{name} must be a string"))),
    }
}

fn optional_string(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, GcpAuthError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(GcpAuthError::invalid(format!("{name} must be a string"))),
    }
}

/// `scope` as APISIX reads it: a space-separated string or an array of strings.
fn scope_field(obj: &serde_json::Map<String, Value>) -> Result<Option<Vec<String>>, GcpAuthError> {
    let scopes: Vec<String> = match obj.get("scope") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a {
                let s = v.as_str().ok_or_else(|| GcpAuthError::invalid("scope must be a string or an array of strings"))?;
                out.extend(s.split_whitespace().map(str::to_owned));
            }
            out
        }
        Some(_) => return Err(GcpAuthError::invalid("scope must be a string or an array of strings")),
    };
    Ok((!scopes.is_empty()).then_some(scopes))
}

fn load_key(pem: &str) -> Result<RsaKeyPair, GcpAuthError> {
    // Keys pasted through some tools arrive with literal "\n" sequences.
    let pem = if pem.contains("\\n") { pem.replace("\\n", "\n") } else { pem.to_owned() };
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| GcpAuthError::invalid("private_key is not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"))?;
    let loaded = match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(GcpAuthError::invalid("private_key does not load: not an RSA key (PKCS#8 or PKCS#1 expected)")),
    };
    loaded.map_err(|e| GcpAuthError::invalid(format!("private_key does not load as an RSA key: {e}")))
}

fn check_token_uri(uri: &str) -> Result<(), GcpAuthError> {
    let ok = uri
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
    if ok { Ok(()) } else { Err(GcpAuthError::invalid("token_uri must be an http(s) URL")) }
}

impl ServiceAccount {
    /// Parses and checks a service-account JSON: it must parse, be an object of
    /// `"type": "service_account"` (when `type` is present), and carry `client_email`,
    /// `private_key` (RSA, PKCS#8 or PKCS#1 PEM, and it must load) and an http(s)
    /// `token_uri`.
    pub fn from_json(json: &str) -> Result<ServiceAccount, GcpAuthError> {
        // serde_json's syntax errors name a position, never the text around it.
        let v: Value = serde_json::from_str(json).map_err(|e| GcpAuthError::invalid(format!("does not parse as JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| GcpAuthError::invalid("must be a JSON object"))?;
        if let Some(t) = obj.get("type") {
            match t.as_str() {
                Some("service_account") => {}
                Some(other) => {
                    return Err(GcpAuthError::invalid(format!(
                        "type {:?} is not supported (only service_account keys)",
                        crate::error::sanitize(other, 40)
                    )));
                }
                None => return Err(GcpAuthError::invalid("type must be a string")),
            }
        }
        let client_email = string_field(obj, "client_email")?.to_owned();
        let private_key = string_field(obj, "private_key")?;
        let token_uri = string_field(obj, "token_uri")?.to_owned();
        check_token_uri(&token_uri)?;
        let key = load_key(private_key)?;
        Ok(ServiceAccount {
            private_key_id: optional_string(obj, "private_key_id")?,
            project_id: optional_string(obj, "project_id")?,
            scopes: scope_field(obj)?,
            client_email,
            token_uri,
            key,
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

    /// `expect`: None = accepted; Some(fragment) = rejected with a message containing it.
    fn check(json: &str, expect: Option<&str>) {
        match (ServiceAccount::from_json(json), expect) {
            (Ok(_), None) => {}
            (Ok(_), Some(f)) => panic!("accepted, expected an error with {f:?}"),
            (Err(e), None) => panic!("rejected: {e}"),
            (Err(e), Some(f)) => {
                let m = e.to_string();
                assert!(m.starts_with("invalid gcp service account json: "), "{m}");
                assert!(m.contains(f), "{m:?} lacks {f:?}");
                // Never echo the key: no line of its base64 body appears in the message.
                for line in KEY_A.lines().filter(|l| !l.starts_with("-----")) {
                    assert!(!m.contains(line), "message echoes the key: {m}");
                }
                assert!(!m.contains("MII"), "message echoes the key: {m}");
            }
        }
    }

    #[test]
    fn validation_names_the_problem_without_echoing_the_key() {
        check(&sa(json!({})), None);
        check(&sa(json!({"type": null})), None);
        check("{not json", Some("does not parse as JSON"));
        check("[]", Some("must be a JSON object"));
        check(&sa(json!({"client_email": null})), Some("lacks client_email"));
        check(&sa(json!({"private_key": null})), Some("lacks private_key"));
        check(&sa(json!({"token_uri": null})), Some("lacks token_uri"));
        check(&sa(json!({"client_email": 5})), Some("client_email must be a string"));
        check(&sa(json!({"token_uri": "ftp://x/token"})), Some("token_uri must be an http(s) URL"));
        check(&sa(json!({"type": "authorized_user"})), Some("type \"authorized_user\" is not supported"));
        check(&sa(json!({"private_key": "not a pem"})), Some("private_key is not a PEM private key"));
        // A PEM that is not a valid key: a truncated body.
        let broken: String = KEY_A.lines().filter(|l| !l.starts_with("-----")).take(3).collect::<Vec<_>>().join("\n");
        check(
            &sa(json!({"private_key": format!("-----BEGIN PRIVATE KEY-----\n{broken}\n-----END PRIVATE KEY-----\n")})),
            Some("private_key does not load"),
        );
        check(&sa(json!({"scope": 5})), Some("scope must be"));
    }

    #[test]
    fn literal_backslash_n_keys_load() {
        check(&sa(json!({"private_key": KEY_A.replace('\n', "\\n")})), None);
    }

    #[test]
    fn scope_from_string_or_array() {
        let a = ServiceAccount::from_json(&sa(json!({"scope": "a b"}))).unwrap();
        assert_eq!(a.scopes().unwrap(), ["a", "b"]);
        let a = ServiceAccount::from_json(&sa(json!({"scope": ["a", "b c"]}))).unwrap();
        assert_eq!(a.scopes().unwrap(), ["a", "b", "c"]);
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
