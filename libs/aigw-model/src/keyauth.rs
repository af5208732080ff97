//! `key-auth` (CONTRACT §12): the route plugin's config, a credential's key, and the keyed
//! hash keys are kept as.
//!
//! A key is stored, published and looked up only as `HMAC-SHA-256(hash key, key)`, written
//! `hmac-sha256:<64 hex>` where a key would be. The hash key is the same on aigw-config
//! (which hashes keys it is given) and every proxy (which hashes keys clients present): a
//! random key of the store, written once by the first aigw-config to start and published
//! to proxies in the key-auth settings resource, encrypted under `--data-encryption-key`
//! when there is one (so adding or rotating a data key keeps every stored hash valid,
//! which a hash key derived from the data key would not). A leaked snapshot,
//! discovery stream or `/config_dump` thus gives no usable key, and a lookup costs the
//! same whatever part of a key is right (one HMAC, one hash-table probe).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::{ValidationError, from_value_at};

/// The marker of a hashed key.
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// Type URL of the key-auth settings resource (the hash key) on the discovery stream.
pub const SETTINGS_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.KeyAuthSettings";

/// `key-auth` on a route (APISIX's schema).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// The header the key is read from first.
    #[serde(default = "d_apikey")]
    pub header: String,
    /// The query parameter read last.
    #[serde(default = "d_apikey")]
    pub query: String,
    /// APISIX strips the key before the upstream only when true; aigw never forwards a
    /// consumer's key (accepted for compatibility).
    #[serde(default)]
    pub hide_credentials: bool,
    /// The consumer a request runs as when it has no valid key.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// APISIX 3.15's `WWW-Authenticate: apikey realm="…"`.
    #[serde(default = "d_realm")]
    pub realm: String,
}

fn d_apikey() -> String {
    "apikey".into()
}
fn d_realm() -> String {
    "key".into()
}

/// `key-auth` on a credential or inline on a consumer: the key (missing: generated).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthKey {
    #[serde(default)]
    pub key: Option<String>,
}

pub(crate) fn validate_route(path: &str, conf: &Value) -> Result<(), ValidationError> {
    let c: KeyAuthConfig = from_value_at(path, conf)?;
    for (field, v) in [("header", &c.header), ("query", &c.query)] {
        if v.is_empty() || (field == "header" && http::HeaderName::from_bytes(v.as_bytes()).is_err()) {
            return Err(ValidationError::new(format!("{path}.{field}"), "must be a non-empty header name"));
        }
    }
    if let Some(a) = &c.anonymous_consumer {
        crate::route::validate_username(&format!("{path}.anonymous_consumer"), a)?;
    }
    Ok(())
}

pub(crate) fn validate_key(path: &str, conf: &Value) -> Result<(), ValidationError> {
    let c: KeyAuthKey = from_value_at(path, conf)?;
    if let Some(k) = &c.key
        && (k.is_empty() || k.len() > 512 || k.chars().any(char::is_control))
    {
        return Err(ValidationError::new(format!("{path}.key"), "must be 1..512 printable characters"));
    }
    Ok(())
}

/// The keyed hash of consumer keys.
#[derive(Clone)]
pub struct KeyHasher(ring::hmac::Key);

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    /// A hasher over a 32-byte hash key.
    pub fn new(hash_key: &[u8; 32]) -> KeyHasher {
        KeyHasher(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hash_key))
    }

    /// A fresh random hash key (a store without a data key keeps one).
    pub fn random_key() -> [u8; 32] {
        let mut k = [0u8; 32];
        fill_random(&mut k);
        k
    }

    /// The 32-byte keyed hash of `key`.
    pub fn hash(&self, key: &[u8]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.0, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// `hmac-sha256:<hex>`, the stored form of `key`.
    pub fn stored(&self, key: &str) -> String {
        format!("{HASH_PREFIX}{}", hex::encode(self.hash(key.as_bytes())))
    }
}

/// The hash of a stored `hmac-sha256:<hex>` key.
pub fn parse_stored(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix(HASH_PREFIX)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

pub fn is_stored_hash(s: &str) -> bool {
    parse_stored(s).is_some()
}

fn fill_random(buf: &mut [u8]) {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    OsRng.fill_bytes(buf);
}

/// A generated key: `aigw-` and 43 base62 characters (32 random bytes).
pub fn generate_key() -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    // Base62 of the 256-bit number, most significant digit first, padded to 43 digits.
    let mut n = bytes.to_vec();
    let mut digits = Vec::with_capacity(43);
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < 43 {
        digits.push(b'0');
    }
    digits.reverse();
    format!("aigw-{}", String::from_utf8_lossy(&digits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generated_keys_are_aigw_and_43_base62() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        for k in [a, b] {
            let rest = k.strip_prefix("aigw-").unwrap();
            assert_eq!(rest.len(), 43, "{k}");
            assert!(rest.bytes().all(|c| c.is_ascii_alphanumeric()), "{k}");
        }
    }

    #[test]
    fn hashes_are_keyed_and_stable() {
        let h1 = KeyHasher::new(&[0x11; 32]);
        let h2 = KeyHasher::new(&[0x11; 32]);
        let other = KeyHasher::new(&[0x22; 32]);
        assert_eq!(h1.stored("sk-team-a"), h2.stored("sk-team-a"), "the same hash key, the same hash");
        assert_ne!(h1.stored("sk-team-a"), other.stored("sk-team-a"));
        assert_ne!(h1.stored("sk-team-a"), h1.stored("sk-team-b"));
        let s = h1.stored("sk-team-a");
        assert!(s.starts_with(HASH_PREFIX) && !s.contains("sk-team-a") && s.len() == HASH_PREFIX.len() + 64);
        assert_eq!(parse_stored(&s), Some(h1.hash(b"sk-team-a")));
        assert_eq!(parse_stored("sk-team-a"), None);
        assert_eq!(parse_stored("hmac-sha256:zz"), None);
        assert_ne!(KeyHasher::random_key(), KeyHasher::random_key());
    }

    #[test]
    fn route_config() {
        let c: KeyAuthConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!((c.header.as_str(), c.query.as_str(), c.hide_credentials, c.anonymous_consumer), ("apikey", "apikey", false, None));
        assert!(validate_route("p", &json!({"header": "Authorization", "anonymous_consumer": "guest"})).is_ok());
        assert!(validate_route("p", &json!({"header": ""})).unwrap_err().to_string().starts_with("p.header"));
        assert!(validate_route("p", &json!({"header": "a b"})).is_err());
        assert!(validate_route("p", &json!({"anonymous_consumer": "a b"})).unwrap_err().to_string().contains("anonymous_consumer"));
        assert!(validate_route("p", &json!({"key": "x"})).unwrap_err().to_string().contains("unknown field `key`"));
        assert!(validate_key("p", &json!({"key": "x"})).is_ok());
        assert!(validate_key("p", &json!({"key": ""})).is_err());
    }
}
