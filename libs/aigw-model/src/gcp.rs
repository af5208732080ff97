//! A GCP service-account JSON, parsed and checked: the one place that decides whether a
//! `auth.gcp.service_account_json` is usable. Route validation calls it (a bad JSON is a
//! 400 at config time); `aigw-gcp-auth` builds its signer from the same parse, so the
//! config service and the proxy can never disagree about a key.
//!
//! Messages name the field or the problem and are built from fixed text only: never a
//! value of the JSON (serde_json syntax errors carry only a line and a column).

use ring::signature::RsaKeyPair;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value};

/// Why a service-account JSON is unusable. The text names the problem ("lacks
/// client_email", "private_key does not load as an RSA key: …") and never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidServiceAccount(pub String);

fn invalid(reason: impl Into<String>) -> InvalidServiceAccount {
    InvalidServiceAccount(reason.into())
}

/// A parsed service-account JSON with its RSA key loaded. Never `Debug`-printed with
/// the key (the impl below redacts it).
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub token_uri: String,
    pub project_id: Option<String>,
    /// The JSON's own `scope` (a space-separated string or an array, as APISIX reads it).
    pub scopes: Option<Vec<String>>,
    pub key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Checks a service-account JSON (config validation).
pub fn validate_service_account_json(json: &str) -> Result<(), InvalidServiceAccount> {
    parse_service_account(json).map(|_| ())
}

/// Parses and checks a service-account JSON: it must parse, be an object of
/// `"type": "service_account"` (when `type` is present), and carry `client_email`,
/// `private_key` (RSA, PKCS#8 or PKCS#1 PEM, and it must load) and an http(s)
/// `token_uri`. Keys pasted with literal `\n` sequences are accepted.
pub fn parse_service_account(json: &str) -> Result<ServiceAccountKey, InvalidServiceAccount> {
    let v: Value = serde_json::from_str(json).map_err(|e| invalid(format!("does not parse as JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| invalid("must be a JSON object"))?;
    if let Some(t) = obj.get("type") {
        match t.as_str() {
            Some("service_account") => {}
            Some(other) => {
                return Err(invalid(format!("type {:?} is not supported (only service_account keys)", short(other, 40))));
            }
            None => return Err(invalid("type must be a string")),
        }
    }
    let client_email = string_field(obj, "client_email")?.to_owned();
    let private_key = string_field(obj, "private_key")?;
    let token_uri = string_field(obj, "token_uri")?.to_owned();
    check_token_uri(&token_uri)?;
    let key = load_key(private_key)?;
    Ok(ServiceAccountKey {
        private_key_id: optional_string(obj, "private_key_id")?,
        project_id: optional_string(obj, "project_id")?,
        scopes: scope_field(obj)?,
        client_email,
        token_uri,
        key,
    })
}

/// At most `max` printable characters of a value that may appear in a message (only
/// used for `type`, which is never secret).
fn short(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, InvalidServiceAccount> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(invalid(format!("lacks {name}"))),
        Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(format!("{name} is empty"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn optional_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, InvalidServiceAccount> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn scope_field(obj: &Map<String, Value>) -> Result<Option<Vec<String>>, InvalidServiceAccount> {
    let bad = || invalid("scope must be a string or an array of strings");
    let scopes: Vec<String> = match obj.get("scope") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a {
                out.extend(v.as_str().ok_or_else(bad)?.split_whitespace().map(str::to_owned));
            }
            out
        }
        Some(_) => return Err(bad()),
    };
    Ok((!scopes.is_empty()).then_some(scopes))
}

fn load_key(pem: &str) -> Result<RsaKeyPair, InvalidServiceAccount> {
    let pem = if pem.contains("\\n") { pem.replace("\\n", "\n") } else { pem.to_owned() };
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| invalid("private_key is not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"))?;
    let loaded = match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(invalid("private_key does not load: not an RSA key (PKCS#8 or PKCS#1 expected)")),
    };
    loaded.map_err(|e| invalid(format!("private_key does not load as an RSA key: {e}")))
}

fn check_token_uri(uri: &str) -> Result<(), InvalidServiceAccount> {
    let ok = uri
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
    if ok { Ok(()) } else { Err(invalid("token_uri must be an http(s) URL")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    /// `expect`: None = accepted; Some(fragment) = rejected with a message containing it
    /// and none of the key.
    fn check(json: &str, expect: Option<&str>) {
        match (parse_service_account(json), expect) {
            (Ok(_), None) => {}
            (Ok(_), Some(f)) => panic!("accepted, expected an error with {f:?}"),
            (Err(e), None) => panic!("rejected: {e}"),
            (Err(e), Some(f)) => {
                let m = e.to_string();
                assert!(m.contains(f), "{m:?} lacks {f:?}");
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
        check(&sa(json!({"client_email": " "})), Some("client_email is empty"));
        check(&sa(json!({"token_uri": "ftp://x/token"})), Some("token_uri must be an http(s) URL"));
        check(&sa(json!({"type": "authorized_user"})), Some("type \"authorized_user\" is not supported"));
        check(&sa(json!({"private_key": "not a pem"})), Some("private_key is not a PEM private key"));
        let broken: String = KEY_A.lines().filter(|l| !l.starts_with("-----")).take(3).collect::<Vec<_>>().join("\n");
        check(
            &sa(json!({"private_key": format!("-----BEGIN PRIVATE KEY-----\n{broken}\n-----END PRIVATE KEY-----\n")})),
            Some("private_key does not load"),
        );
        check(&sa(json!({"scope": 5})), Some("scope must be"));
        check(&sa(json!({"private_key": KEY_A.replace('\n', "\\n")})), None);
    }

    #[test]
    fn fields_and_scopes() {
        let k = parse_service_account(&sa(json!({"scope": ["a", "b c"]}))).unwrap();
        assert_eq!(
            (k.client_email.as_str(), k.project_id.as_deref(), k.private_key_id.as_deref()),
            ("gw@p.iam.gserviceaccount.com", Some("p"), Some("kid1"))
        );
        assert_eq!(k.scopes.unwrap(), ["a", "b", "c"]);
        assert_eq!(parse_service_account(&sa(json!({"scope": "a b"}))).unwrap().scopes.unwrap(), ["a", "b"]);
        let d = format!("{:?}", parse_service_account(&sa(json!({}))).unwrap());
        assert!(d.contains("<redacted>") && !d.contains("MII"), "{d}");
    }
}
