//! Secret fields of a route (CONTRACT §5): encryption at rest with AES-256-GCM,
//! `$env://NAME` references, and redaction for every read.
//!
//! Secret fields (inside `plugins.ai-proxy` and each `plugins.ai-proxy-multi.instances[i]`):
//! `auth.header.*`, `auth.query.*`, `auth.gcp.service_account_json`,
//! `auth.aws.secret_access_key`, `auth.aws.session_token`; and `plugins.http-logger.auth_header`.
//! An encrypted value is `$aigw-enc$v1$` + base64(nonce ‖ ciphertext ‖ tag).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

pub const ENC_PREFIX: &str = "$aigw-enc$v1$";
pub const ENV_PREFIX: &str = "$env://";
/// What reads show instead of a secret when it cannot be shown encrypted.
pub const REDACTED: &str = "******";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("encryption key must be 32 bytes given as 64 hex characters or base64")]
    BadKey,
    #[error("{0}: value is encrypted but no data encryption key is configured")]
    NoKey(String),
    #[error("{0}: cannot decrypt (wrong data encryption key or corrupted value)")]
    Decrypt(String),
    #[error("{0}: environment variable {1} is not set")]
    MissingEnv(String, String),
    /// `--data-encryption-key` is not a key.
    #[error("--data-encryption-key: {0}")]
    Flag(Box<SecretError>),
}

/// A parsed `--data-encryption-key`.
#[derive(Clone)]
pub struct DataKey(Aes256Gcm);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Accepts 64 hex characters or base64 of exactly 32 bytes.
    pub fn parse(s: &str) -> Result<DataKey, SecretError> {
        let s = s.trim();
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(s).map_err(|_| SecretError::BadKey)?
        } else {
            B64.decode(s).map_err(|_| SecretError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(DataKey(Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?))
    }

    /// `--data-encryption-key`, when given.
    pub fn from_flag(flag: Option<&str>) -> Result<Option<DataKey>, SecretError> {
        flag.map(|k| DataKey::parse(k).map_err(|e| SecretError::Flag(Box::new(e)))).transpose()
    }

    pub fn encrypt(&self, plain: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and a 12-byte nonce cannot fail.
        let ct = self.0.encrypt(&nonce, plain.as_bytes()).unwrap_or_default();
        let mut buf = nonce.to_vec();
        buf.extend_from_slice(&ct);
        format!("{ENC_PREFIX}{}", B64.encode(buf))
    }

    pub fn decrypt(&self, value: &str, path: &str) -> Result<String, SecretError> {
        let raw = value.strip_prefix(ENC_PREFIX).ok_or_else(|| SecretError::Decrypt(path.to_owned()))?;
        let buf = B64.decode(raw).map_err(|_| SecretError::Decrypt(path.to_owned()))?;
        if buf.len() < 12 + 16 {
            return Err(SecretError::Decrypt(path.to_owned()));
        }
        let (nonce, ct) = buf.split_at(12);
        let plain = self.0.decrypt(Nonce::from_slice(nonce), ct).map_err(|_| SecretError::Decrypt(path.to_owned()))?;
        String::from_utf8(plain).map_err(|_| SecretError::Decrypt(path.to_owned()))
    }
}

/// A random 128-bit token as 32 hex characters (generated admin keys).
pub fn random_token() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

pub fn is_encrypted(v: &str) -> bool {
    v.starts_with(ENC_PREFIX)
}

/// `$env://NAME` (resolved by the proxy) — stored as given, never encrypted.
pub fn is_reference(v: &str) -> bool {
    v.starts_with(ENV_PREFIX)
}

/// Calls `f(path, value)` for every secret string of a route object (JSON form).
pub fn for_each_secret(route: &mut Value, mut f: impl FnMut(&str, &mut String)) {
    for_each_secret_at(route, |path, _, s| f(path, s));
}

/// Like [`for_each_secret`], also giving each secret's JSON pointer (unambiguous where the
/// dotted path is not: header names may contain dots). Secrets live in
/// `plugins.ai-proxy.auth` and in `plugins.ai-proxy-multi.instances[i].auth`; the dotted
/// paths are `plugins.ai-proxy.auth.header.NAME` and
/// `plugins.ai-proxy-multi.instances[0].auth.header.NAME`.
pub fn for_each_secret_at(route: &mut Value, mut f: impl FnMut(&str, &str, &mut String)) {
    if let Some(auth) = route.pointer_mut("/plugins/ai-proxy/auth").and_then(Value::as_object_mut) {
        visit_auth(auth, "plugins.ai-proxy.auth", "/plugins/ai-proxy/auth", &mut f);
    }
    if let Some(Value::String(s)) = route.pointer_mut("/plugins/http-logger/auth_header") {
        f("plugins.http-logger.auth_header", "/plugins/http-logger/auth_header", s);
    }
    // APISIX's encrypt_fields of ai-rate-limiting (and ai-budget, which shares its Redis
    // settings), on routes, consumers and consumer groups alike.
    for plugin in ["ai-rate-limiting", "ai-budget"] {
        let ptr = format!("/plugins/{plugin}/redis_password");
        if let Some(Value::String(s)) = route.pointer_mut(&ptr) {
            f(&format!("plugins.{plugin}.redis_password"), &ptr, s);
        }
    }
    if let Some(instances) = route.pointer_mut("/plugins/ai-proxy-multi/instances").and_then(Value::as_array_mut) {
        for (i, ins) in instances.iter_mut().enumerate() {
            if let Some(auth) = ins.get_mut("auth").and_then(Value::as_object_mut) {
                let path = format!("plugins.ai-proxy-multi.instances[{i}].auth");
                let ptr = format!("/plugins/ai-proxy-multi/instances/{i}/auth");
                visit_auth(auth, &path, &ptr, &mut f);
            }
        }
    }
}

fn visit_auth(auth: &mut serde_json::Map<String, Value>, path: &str, ptr: &str, f: &mut impl FnMut(&str, &str, &mut String)) {
    for kind in ["header", "query"] {
        if let Some(map) = auth.get_mut(kind).and_then(Value::as_object_mut) {
            for (k, v) in map.iter_mut() {
                if let Value::String(s) = v {
                    let escaped = k.replace('~', "~0").replace('/', "~1");
                    f(&format!("{path}.{kind}.{k}"), &format!("{ptr}/{kind}/{escaped}"), s);
                }
            }
        }
    }
    for (obj, field) in [("gcp", "service_account_json"), ("aws", "secret_access_key"), ("aws", "session_token")] {
        if let Some(Value::String(s)) = auth.get_mut(obj).and_then(|o| o.get_mut(field)) {
            f(&format!("{path}.{obj}.{field}"), &format!("{ptr}/{obj}/{field}"), s);
        }
    }
}

/// Encrypts every secret that is not already encrypted or a reference.
pub fn encrypt_route(route: &mut Value, key: &DataKey) {
    for_each_secret(route, |_, s| {
        if !is_encrypted(s) && !is_reference(s) {
            *s = key.encrypt(s);
        }
    });
}

/// Replaces every clear-text secret with [`REDACTED`] (encrypted values and references stay).
pub fn redact_route(route: &mut Value) {
    for_each_secret(route, |_, s| {
        if !is_encrypted(s) && !is_reference(s) {
            *s = REDACTED.to_owned();
        }
    });
}

/// Replaces every secret, encrypted or not, with [`REDACTED`] (for `/config_dump` and logs).
pub fn redact_all(route: &mut Value) {
    for_each_secret(route, |_, s| *s = REDACTED.to_owned());
}

/// Turns every secret into clear text: decrypts encrypted values and resolves
/// `$env://NAME` from `env`. Used by the proxy when compiling a snapshot.
pub fn reveal_route(route: &mut Value, key: Option<&DataKey>, env: &dyn Fn(&str) -> Option<String>) -> Result<(), SecretError> {
    let mut result = Ok(());
    for_each_secret(route, |path, s| {
        if result.is_err() {
            return;
        }
        if is_encrypted(s) {
            match key {
                None => result = Err(SecretError::NoKey(path.to_owned())),
                Some(k) => match k.decrypt(s, path) {
                    Ok(p) => *s = p,
                    Err(e) => result = Err(e),
                },
            }
        } else if let Some(name) = s.strip_prefix(ENV_PREFIX) {
            match env(name) {
                Some(v) => *s = v,
                None => result = Err(SecretError::MissingEnv(path.to_owned(), name.to_owned())),
            }
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn route() -> Value {
        json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": {"provider": "bedrock", "auth": {
            "header": {"Authorization": "Bearer sk-1"}, "query": {"key": "q-1"},
            "gcp": {"service_account_json": "{}"},
            "aws": {"access_key_id": "AKID", "secret_access_key": "SECRET", "session_token": "TOK"}}}}})
    }

    #[test]
    fn key_formats() {
        assert!(DataKey::parse(HEX_KEY).is_ok());
        assert!(DataKey::parse(&B64.encode([7u8; 32])).is_ok());
        assert_eq!(DataKey::parse("abcd").unwrap_err(), SecretError::BadKey);
        assert_eq!(DataKey::parse(&B64.encode([7u8; 31])).unwrap_err(), SecretError::BadKey);
    }

    #[test]
    fn encrypt_then_reveal_round_trips_and_hides_every_secret() {
        let key = DataKey::parse(HEX_KEY).unwrap();
        let mut r = route();
        encrypt_route(&mut r, &key);
        let text = r.to_string();
        for secret in ["sk-1", "q-1", "SECRET", "TOK"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("AKID"), "access key id is not a secret");
        // Idempotent: already-encrypted values are kept.
        let once = r.clone();
        encrypt_route(&mut r, &key);
        assert_eq!(r, once);
        reveal_route(&mut r, Some(&key), &|_| None).unwrap();
        assert_eq!(r, route());
    }

    #[test]
    fn reveal_errors() {
        let key = DataKey::parse(HEX_KEY).unwrap();
        let mut r = route();
        encrypt_route(&mut r, &key);
        let err = reveal_route(&mut r.clone(), None, &|_| None).unwrap_err();
        assert!(matches!(err, SecretError::NoKey(_)));
        let other = DataKey::parse(&"ff".repeat(32)).unwrap();
        assert!(matches!(reveal_route(&mut r, Some(&other), &|_| None).unwrap_err(), SecretError::Decrypt(_)));
    }

    #[test]
    fn env_references() {
        let mut r = json!({"plugins": {"ai-proxy": {"auth": {"header": {"Authorization": "$env://OPENAI_KEY"}}}}});
        let mut enc = r.clone();
        encrypt_route(&mut enc, &DataKey::parse(HEX_KEY).unwrap());
        assert_eq!(enc, r, "references are stored as given");
        let env = |n: &str| (n == "OPENAI_KEY").then(|| "Bearer from-env".to_owned());
        reveal_route(&mut r, None, &env).unwrap();
        assert_eq!(r.pointer("/plugins/ai-proxy/auth/header/Authorization").unwrap(), "Bearer from-env");
        let mut missing = json!({"plugins": {"ai-proxy": {"auth": {"query": {"k": "$env://NOPE"}}}}});
        assert!(matches!(reveal_route(&mut missing, None, &|_| None).unwrap_err(), SecretError::MissingEnv(..)));
    }

    fn multi_route() -> Value {
        json!({"id": "m", "uri": "/x", "plugins": {"ai-proxy-multi": {"instances": [
            {"name": "a", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": "Bearer sk-multi-a", "x.dotted/name": "dot-secret"}}},
            {"name": "b", "provider": "bedrock", "weight": 1, "auth": {"query": {"key": "q-multi-b"},
                "aws": {"access_key_id": "AKID-B", "secret_access_key": "SECRET-B", "session_token": "TOK-B"},
                "gcp": {"service_account_json": "{\"private_key\":\"PK-B\"}"}}},
            {"name": "c", "provider": "openai", "weight": 0}
        ]}}})
    }

    const MULTI_SECRETS: [&str; 6] = ["sk-multi-a", "dot-secret", "q-multi-b", "SECRET-B", "TOK-B", "PK-B"];

    #[test]
    fn multi_instance_secrets_are_encrypted_redacted_and_revealed() {
        let key = DataKey::parse(HEX_KEY).unwrap();
        let mut paths = Vec::new();
        for_each_secret_at(&mut multi_route(), |path, ptr, _| paths.push((path.to_owned(), ptr.to_owned())));
        assert_eq!(paths.len(), 6, "{paths:?}");
        assert!(paths.contains(&(
            "plugins.ai-proxy-multi.instances[0].auth.header.x.dotted/name".to_owned(),
            "/plugins/ai-proxy-multi/instances/0/auth/header/x.dotted~1name".to_owned()
        )));
        // Every pointer finds its secret.
        let original = multi_route();
        for (_, ptr) in &paths {
            assert!(original.pointer(ptr).and_then(Value::as_str).is_some(), "{ptr}");
        }
        // Encrypted at rest: no secret in clear, the markers present, the key id kept.
        let mut enc = multi_route();
        encrypt_route(&mut enc, &key);
        let text = enc.to_string();
        for s in &MULTI_SECRETS {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(text.matches(ENC_PREFIX).count(), 6, "{text}");
        assert!(text.contains("AKID-B"));
        // Redacted for reads: the marker present and the secret absent.
        let mut red = multi_route();
        redact_route(&mut red);
        let text = red.to_string();
        for s in &MULTI_SECRETS {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(text.matches(REDACTED).count(), 6, "{text}");
        assert_eq!(red.pointer("/plugins/ai-proxy-multi/instances/1/auth/aws/secret_access_key").unwrap(), REDACTED);
        let mut all = enc.clone();
        redact_all(&mut all);
        assert!(!all.to_string().contains(ENC_PREFIX));
        assert_eq!(all.to_string().matches(REDACTED).count(), 6);
        // Revealed by the proxy, with $env:// references resolved.
        enc["plugins"]["ai-proxy-multi"]["instances"][2]["auth"] = json!({"header": {"x-api-key": "$env://KEY_C"}});
        let env = |n: &str| (n == "KEY_C").then(|| "from-env-c".to_owned());
        reveal_route(&mut enc, Some(&key), &env).unwrap();
        let mut want = multi_route();
        want["plugins"]["ai-proxy-multi"]["instances"][2]["auth"] = json!({"header": {"x-api-key": "from-env-c"}});
        assert_eq!(enc, want);
    }

    #[test]
    fn http_logger_auth_header_is_a_secret() {
        let key = DataKey::parse(HEX_KEY).unwrap();
        let logger = json!({"uri": "http://logs/", "auth_header": "Bearer log-secret"});
        let mut r = json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": {"auth": {}}, "http-logger": logger}});
        let mut enc = r.clone();
        encrypt_route(&mut enc, &key);
        let text = enc.to_string();
        assert!(!text.contains("log-secret") && text.contains(ENC_PREFIX), "{text}");
        let mut red = r.clone();
        redact_route(&mut red);
        assert_eq!(red.pointer("/plugins/http-logger/auth_header").unwrap(), REDACTED);
        assert!(!red.to_string().contains("log-secret"));
        let mut all = enc.clone();
        redact_all(&mut all);
        assert_eq!(all.pointer("/plugins/http-logger/auth_header").unwrap(), REDACTED);
        reveal_route(&mut enc, Some(&key), &|_| None).unwrap();
        assert_eq!(enc, r);
        r["plugins"]["http-logger"]["auth_header"] = json!("$env://LOG_TOKEN");
        reveal_route(&mut r, None, &|n| (n == "LOG_TOKEN").then(|| "Bearer from-env".into())).unwrap();
        assert_eq!(r.pointer("/plugins/http-logger/auth_header").unwrap(), "Bearer from-env");
    }

    #[test]
    fn redaction() {
        let mut r = route();
        redact_route(&mut r);
        assert_eq!(r.pointer("/plugins/ai-proxy/auth/aws/secret_access_key").unwrap(), REDACTED);
        assert_eq!(r.pointer("/plugins/ai-proxy/auth/header/Authorization").unwrap(), REDACTED);
        let mut e = route();
        encrypt_route(&mut e, &DataKey::parse(HEX_KEY).unwrap());
        redact_all(&mut e);
        assert_eq!(e.pointer("/plugins/ai-proxy/auth/aws/session_token").unwrap(), REDACTED);
    }
}
