//! Asking Google for a token: the JWT-bearer grant at the account's `token_uri`, or the
//! metadata server. One HTTP client (hyper-util + hyper-rustls on ring, webpki roots),
//! bounded answers, a timeout per request.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::account::ServiceAccount;
use crate::credential::Credential;
use crate::error::{GcpAuthError, chain, endpoint_label, sanitize};
use crate::token::{AccessToken, Clock, DEFAULT_EXPIRES_IN, TtlPolicy};

pub(crate) type HttpClient = aigw_net::client::HttpsClient<Full<Bytes>>;

/// Largest token-endpoint / metadata answer read.
const MAX_ANSWER: usize = 64 * 1024;
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

pub(crate) fn http_client() -> HttpClient {
    // Only a TLS library that cannot do TLS 1.2/1.3 with ring fails here.
    aigw_net::client::https(&aigw_net::client::Options::default().idle_timeout(Duration::from_secs(60)).max_idle_per_host(2))
        .expect("ring supports the default TLS versions")
}

/// Mints one token for `cred` with `scopes`, its lifetime from the answer's `expires_in`
/// and `policy`, measured from just before the request was sent.
pub(crate) async fn mint(
    http: &HttpClient,
    cred: &Credential,
    scopes: &[String],
    policy: TtlPolicy,
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<AccessToken, GcpAuthError> {
    let asked_at = clock.now_ms();
    let (secret, expires_in) = match cred {
        Credential::ServiceAccount(sa) => grant(http, sa, scopes, asked_at / 1000, timeout).await?,
        Credential::Metadata { base_url } => metadata(http, base_url, scopes, timeout).await?,
    };
    let (expires_at, refresh_at) = policy.timing(asked_at, expires_in);
    Ok(AccessToken::new(secret, expires_at, refresh_at))
}

async fn grant(
    http: &HttpClient,
    sa: &ServiceAccount,
    scopes: &[String],
    now_secs: u64,
    timeout: Duration,
) -> Result<(String, u64), GcpAuthError> {
    let assertion = sa.sign_assertion(scopes, now_secs)?;
    let body = format!("grant_type={GRANT_TYPE}&assertion={assertion}");
    let err = |status: Option<u16>, problem: String| GcpAuthError::Mint {
        who: sa.client_email().to_owned(),
        endpoint: endpoint_label(sa.token_uri()),
        status,
        problem,
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(sa.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| err(None, "could not be asked: bad token_uri".into()))?;
    let (status, body) = send(http, req, timeout).await.map_err(|p| err(None, p))?;
    parse_answer(status, &body).map_err(|(s, p)| err(s, p))
}

async fn metadata(http: &HttpClient, base_url: &str, scopes: &[String], timeout: Duration) -> Result<(String, u64), GcpAuthError> {
    let url = format!(
        "{base_url}/computeMetadata/v1/instance/service-accounts/default/token?scopes={}",
        scopes.iter().map(|s| query_escape(s)).collect::<Vec<_>>().join(",")
    );
    let err = |status: Option<u16>, problem: String| GcpAuthError::Mint {
        who: "the default service account".to_owned(),
        endpoint: format!("metadata server {}", endpoint_label(&url)),
        status,
        problem,
    };
    let req = Request::builder()
        .method(Method::GET)
        .uri(&url)
        .header("metadata-flavor", "Google")
        .body(Full::new(Bytes::new()))
        .map_err(|_| err(None, "could not be asked: bad GCE_METADATA_HOST".into()))?;
    let (status, body) = send(http, req, timeout).await.map_err(|p| err(None, p))?;
    parse_answer(status, &body).map_err(|(s, p)| err(s, p))
}

/// Sends and reads at most [`MAX_ANSWER`] bytes, all within `timeout`. `Err` is the
/// problem as a phrase ("unreachable: …", "timed out after 10s").
async fn send(http: &HttpClient, req: Request<Full<Bytes>>, timeout: Duration) -> Result<(u16, Bytes), String> {
    let fut = async {
        let resp = http.request(req).await.map_err(|e| format!("unreachable: {}", chain(&e)))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("answered {status} with an unreadable body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or_else(|_| Err(format!("timed out after {}s", timeout.as_secs_f32())))
}

/// `{"access_token", "expires_in"}` on 200; otherwise the endpoint's reason.
fn parse_answer(status: u16, body: &[u8]) -> Result<(String, u64), (Option<u16>, String)> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        let reason = json
            .as_ref()
            .and_then(|j| {
                // OAuth: {"error": "invalid_grant", "error_description": "..."};
                // Google APIs: {"error": {"message": "...", "status": "..."}}.
                match j.get("error")? {
                    Value::String(code) => Some(match j.get("error_description").and_then(Value::as_str) {
                        Some(d) => format!("{code}: {d}"),
                        None => code.clone(),
                    }),
                    Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
                    _ => None,
                }
            })
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let reason = sanitize(&reason, 200);
        let reason = if reason.is_empty() { "no reason given".to_owned() } else { reason };
        return Err((Some(status), format!("answered {status}: {reason}")));
    }
    let bad = |what: &str| (Some(status), format!("answered 200 without {what}"));
    let json = json.ok_or_else(|| bad("a JSON body"))?;
    let token = json.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(|| bad("access_token"))?;
    let expires_in = match json.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_EXPIRES_IN,
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad("a valid expires_in"))?,
        Some(Value::String(s)) => s.parse().map_err(|_| bad("a valid expires_in"))?,
        Some(_) => return Err(bad("a valid expires_in")),
    };
    Ok((token.to_owned(), expires_in))
}

/// Percent-encodes a query value (scopes are URLs).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse_answer(200, br#"{"access_token":"ya29.a","expires_in":3599,"token_type":"Bearer"}"#), Ok(("ya29.a".into(), 3599)));
        assert_eq!(parse_answer(200, br#"{"access_token":"ya29.a","expires_in":"5"}"#), Ok(("ya29.a".into(), 5)));
        assert_eq!(parse_answer(200, br#"{"access_token":"ya29.a"}"#), Ok(("ya29.a".into(), 3600)));
        assert_eq!(parse_answer(200, br#"{"expires_in":5}"#), Err((Some(200), "answered 200 without access_token".into())));
        assert_eq!(
            parse_answer(400, br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
            Err((Some(400), "answered 400: invalid_grant: Invalid JWT Signature.".into()))
        );
        assert_eq!(
            parse_answer(403, br#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#),
            Err((Some(403), "answered 403: denied".into()))
        );
        assert_eq!(parse_answer(500, b"oops\n"), Err((Some(500), "answered 500: oops".into())));
        assert_eq!(parse_answer(502, b""), Err((Some(502), "answered 502: no reason given".into())));
    }

    #[test]
    fn scopes_are_escaped() {
        assert_eq!(
            query_escape("https://www.googleapis.com/auth/cloud-platform"),
            "https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
        );
    }
}
