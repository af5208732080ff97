//! One error type for everything that can go wrong getting a GCP access token.
//!
//! Every message names the credential by `client_email` (or "the metadata server's
//! default service account") and the endpoint's own reason. None ever contains the
//! private key, the signed assertion or an access token: messages are built from
//! fixed text, field names, e-mail addresses, URLs without their query, and the
//! `error` / `error_description` fields of Google's answers.

/// Why a token could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GcpAuthError {
    /// The service-account JSON is unusable (config time: a 400). `reason` names the
    /// problem ("lacks client_email", "private_key does not load: …") and never echoes
    /// a value from the JSON.
    #[error("invalid gcp service account json: {reason}")]
    InvalidServiceAccount { reason: String },
    /// `GOOGLE_APPLICATION_CREDENTIALS` points at a file that cannot be used.
    #[error("GOOGLE_APPLICATION_CREDENTIALS ({path}): {reason}")]
    CredentialsFile { path: String, reason: String },
    /// The token endpoint or the metadata server refused, failed, timed out or was
    /// unreachable. `who` is the `client_email` (or the metadata server's default
    /// account), `endpoint` the URL without its query, `status` the HTTP status when
    /// there was an answer.
    #[error("failed to get gcp access token for {who}: {endpoint} {problem}")]
    Mint { who: String, endpoint: String, status: Option<u16>, problem: String },
    /// `aigw-token-cache` answered that minting failed (its message is one of the
    /// above, produced on the service side).
    #[error("{message}")]
    Remote { message: String },
    /// Bad options given to the library (e.g. an unusable `--token-cache` URL or CA file).
    #[error("gcp auth configuration: {0}")]
    Config(String),
    /// The task minting the token ended without an answer (runtime shutting down).
    #[error("failed to get gcp access token for {who}: the minting task was interrupted")]
    Interrupted { who: String },
}

impl GcpAuthError {
    pub(crate) fn invalid(reason: impl Into<String>) -> GcpAuthError {
        GcpAuthError::InvalidServiceAccount { reason: reason.into() }
    }

    /// True when the credential itself is wrong (config-time class of error), as opposed
    /// to the token endpoint or the network failing at run time.
    pub fn is_invalid_credential(&self) -> bool {
        matches!(self, GcpAuthError::InvalidServiceAccount { .. } | GcpAuthError::CredentialsFile { .. })
    }
}

/// `Display` of an error and its sources, joined with ": " (hyper's top-level messages
/// alone say little: "client error (Connect)").
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// An endpoint URL as it may appear in messages: scheme, authority and path, no query
/// or userinfo.
pub(crate) fn endpoint_label(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => {
            let host = u.host().unwrap_or_default();
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", u.scheme_str().unwrap_or("http"), u.path())
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Text from a remote party, safe and short enough for a message: printable ASCII-ish,
/// at most `max` characters.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().filter(|c| !c.is_control()).count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_label_drops_query_and_userinfo() {
        assert_eq!(endpoint_label("https://user:pw@oauth2.googleapis.com/token?x=secret"), "https://oauth2.googleapis.com/token");
        assert_eq!(endpoint_label("http://127.0.0.1:8080/t"), "http://127.0.0.1:8080/t");
    }

    #[test]
    fn sanitize_strips_controls_and_truncates() {
        assert_eq!(sanitize("a\nb\u{0}c", 10), "abc");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }
}
