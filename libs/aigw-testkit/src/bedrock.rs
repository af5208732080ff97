//! A strict fake of Amazon Bedrock Runtime (Converse / ConverseStream). It verifies SigV4
//! itself — hand-rolled from the AWS specification, independent of the `aws-sigv4` crate
//! the proxy signs with — and answers 403 like AWS on a wrong key, a missing session token
//! or an altered body. It checks that model ids and ARNs arrive as one percent-encoded path
//! segment, rejects fields Converse does not know, and streams real event-stream frames.

use std::sync::Arc;
use std::time::Duration;

use aigw_llm::eventstream;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fake::{Handler, Recorded, Reply, ReplyBody};

/// The credentials the fake accepts.
#[derive(Debug, Clone)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl AwsKeys {
    /// The AWS documentation's example keys.
    pub fn example() -> AwsKeys {
        AwsKeys {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 strict encoding, as SigV4 canonicalisation requires.
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// The SigV4 signature AWS would compute for a request (non-S3 rules: every path segment
/// of the wire path is encoded once more).
#[allow(clippy::too_many_arguments)]
pub fn sigv4_signature(
    method: &str,
    wire_path: &str,
    query: &str,
    headers: &HeaderMap,
    signed_headers: &[&str],
    body: &[u8],
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let canonical_uri =
        if wire_path.is_empty() { "/".to_owned() } else { wire_path.split('/').map(uri_encode).collect::<Vec<_>>().join("/") };
    let mut q: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap_or((p.to_owned(), String::new())))
        .collect();
    q.sort();
    let canonical_query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let creq = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{}\n{}",
        signed_headers.join(";"),
        hex::encode(Sha256::digest(body))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(creq.as_bytes())));
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    hex::encode(hmac(&k, sts.as_bytes()))
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Reply {
    Reply::json(status, json!({"message": message}))
        .with_header("x-amzn-ErrorType", format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"))
}

/// Verifies the request's SigV4 signature; Err is the 403 AWS would send.
fn verify(r: &Recorded, keys: &AwsKeys, region: &str) -> Result<(), Reply> {
    let forbidden = |kind: &str, m: &str| aws_error(StatusCode::FORBIDDEN, kind, m);
    let auth = r.header("authorization").ok_or_else(|| forbidden("MissingAuthenticationTokenException", "Missing Authentication Token"))?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| forbidden("IncompleteSignatureException", "unsupported algorithm"))?;
    let field = |name: &str| rest.split(", ").find_map(|p| p.strip_prefix(name)).map(str::to_owned);
    let credential = field("Credential=").ok_or_else(|| forbidden("IncompleteSignatureException", "no Credential"))?;
    let signed = field("SignedHeaders=").ok_or_else(|| forbidden("IncompleteSignatureException", "no SignedHeaders"))?;
    let signature = field("Signature=").ok_or_else(|| forbidden("IncompleteSignatureException", "no Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    if parts.len() != 5 || parts[0] != keys.access_key_id {
        return Err(forbidden("UnrecognizedClientException", "The security token included in the request is invalid."));
    }
    if parts[2] != region || parts[3] != "bedrock" || parts[4] != "aws4_request" {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid region and service 'bedrock', not {credential}"),
        ));
    }
    let amz_date = r.header("x-amz-date").ok_or_else(|| forbidden("IncompleteSignatureException", "x-amz-date is required"))?;
    if amz_date.len() != 16 || &amz_date[..8] != parts[1] {
        return Err(forbidden("InvalidSignatureException", "Date in Credential scope does not match x-amz-date"));
    }
    let signed: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err(forbidden("InvalidSignatureException", &format!("'{required}' must be a signed header")));
        }
    }
    if let Some(token) = &keys.session_token
        && (r.header("x-amz-security-token") != Some(token.as_str()) || !signed.contains(&"x-amz-security-token"))
    {
        return Err(forbidden("UnrecognizedClientException", "The security token included in the request is invalid."));
    }
    let (path, query) = r.path_and_query.split_once('?').unwrap_or((&r.path_and_query, ""));
    let want = sigv4_signature(&r.method, path, query, &r.headers, &signed, &r.body, &keys.secret_access_key, amz_date, region, "bedrock");
    if want != signature {
        return Err(forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

const CONVERSE_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "promptVariables",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "outputConfig",
];

/// The fake Bedrock Runtime for `region`. Model ids steer it: a model id containing
/// `throttle` gets 429 ThrottlingException; `exception-stream` streams an exception frame
/// mid-way. With a `toolConfig` and no `toolResult` yet, the answer is a `toolUse` of the
/// first tool with `{"city": "Oslo"}`. Answers quote the model id they were called for.
pub fn bedrock(keys: AwsKeys, region: &str) -> Handler {
    let region = region.to_owned();
    Arc::new(move |r: &Recorded| {
        if let Err(reply) = verify(r, &keys, &region) {
            return reply;
        }
        let path = r.path().to_owned();
        let Some(rest) = path.strip_prefix("/model/") else {
            return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", &format!("no operation at {path}"));
        };
        let (segment, stream) = match (rest.strip_suffix("/converse-stream"), rest.strip_suffix("/converse")) {
            (Some(s), _) => (s, true),
            (None, Some(s)) => (s, false),
            _ => return aws_error(StatusCode::NOT_FOUND, "UnknownOperationException", &format!("no operation at {path}")),
        };
        // The model id is one URI label: `:` and `/` must arrive percent-encoded.
        if segment.is_empty() || segment.contains('/') || segment.contains(':') {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                &format!("the model id must be one percent-encoded path segment, got {segment:?}"),
            );
        }
        let model = crate::fake::percent_decode(segment);
        let body: Value = match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(_) => return aws_error(StatusCode::BAD_REQUEST, "SerializationException", "the request body is not valid JSON"),
        };
        let Some(obj) = body.as_object() else { return aws_error(StatusCode::BAD_REQUEST, "SerializationException", "expected an object") };
        if let Some(bad) = obj.keys().find(|k| !CONVERSE_FIELDS.contains(&k.as_str())) {
            return aws_error(StatusCode::BAD_REQUEST, "ValidationException", &format!("extraneous key [{bad}] is not permitted"));
        }
        let msgs = obj.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        if msgs.is_empty() {
            return aws_error(StatusCode::BAD_REQUEST, "ValidationException", "The messages field is required and must not be empty.");
        }
        let tool_history = msgs
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some());
        if tool_history && obj.get("toolConfig").is_none() {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
            );
        }
        if model.contains("throttle") {
            return aws_error(StatusCode::TOO_MANY_REQUESTS, "ThrottlingException", "Too many requests, please wait before trying again.");
        }
        let answered = msgs.last().and_then(|m| m["content"].as_array()).is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
        let tool =
            if answered { None } else { body.pointer("/toolConfig/tools/0/toolSpec/name").and_then(Value::as_str).map(str::to_owned) };
        let text = format!("1 + 1 = 2. (model={model})");
        let usage = json!({"inputTokens": 14, "outputTokens": 9, "totalTokens": 23});
        if !stream {
            let content = match &tool {
                Some(t) => json!([{"toolUse": {"toolUseId": "tooluse_fake1", "name": t, "input": {"city": "Oslo"}}}]),
                None => json!([{"text": text}]),
            };
            let stop = if tool.is_some() { "tool_use" } else { "end_turn" };
            return Reply::json(
                StatusCode::OK,
                json!({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}}),
            );
        }
        let z = Duration::ZERO;
        let ev = |k: &str, v: Value| (z, Bytes::from(eventstream::event(k, &v)));
        let mut frames = vec![ev("messageStart", json!({"role": "assistant", "p": "abcdefgh"}))];
        match &tool {
            Some(t) => {
                frames.push(ev(
                    "contentBlockStart",
                    json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_fake1", "name": t}}}),
                ));
                frames.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"city\":"}}})));
                frames.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "\"Oslo\"}"}}})));
                frames.push(ev("contentBlockStop", json!({"contentBlockIndex": 0})));
                frames.push(ev("messageStop", json!({"stopReason": "tool_use"})));
            }
            None => {
                let (a, b) = text.split_at(6);
                frames.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": a}})));
                if model.contains("exception-stream") {
                    frames.push((z, Bytes::from(eventstream::exception("modelStreamErrorException", "The model failed mid-stream."))));
                    return Reply {
                        status: StatusCode::OK,
                        headers: Vec::new(),
                        body: ReplyBody::Stream { content_type: "application/vnd.amazon.eventstream", chunks: frames, fail: false },
                        delay: z,
                    };
                }
                frames.push(ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": b}})));
                frames.push(ev("contentBlockStop", json!({"contentBlockIndex": 0})));
                frames.push(ev("messageStop", json!({"stopReason": "end_turn"})));
            }
        }
        frames.push(ev("metadata", json!({"usage": usage, "metrics": {"latencyMs": 15}})));
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ReplyBody::Stream { content_type: "application/vnd.amazon.eventstream", chunks: frames, fail: false },
            delay: z,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(keys: &AwsKeys, body: &[u8], with_token: bool) -> Recorded {
        let amz_date = "20261125T000000Z";
        let mut h = HeaderMap::new();
        h.insert("host", "127.0.0.1:9".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-amz-date", amz_date.parse().unwrap());
        let mut names = vec!["content-type", "host", "x-amz-date"];
        if with_token && let Some(t) = &keys.session_token {
            h.insert("x-amz-security-token", t.parse().unwrap());
            names.push("x-amz-security-token");
        }
        let path = "/model/m%3A0/converse";
        let sig = sigv4_signature("POST", path, "", &h, &names, body, &keys.secret_access_key, amz_date, "us-east-1", "bedrock");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/20261125/us-east-1/bedrock/aws4_request, SignedHeaders={}, Signature={sig}",
            keys.access_key_id,
            names.join(";")
        );
        h.insert("authorization", auth.parse().unwrap());
        Recorded {
            method: "POST".into(),
            path_and_query: path.into(),
            version: http::Version::HTTP_11,
            headers: h,
            body: Bytes::copy_from_slice(body),
        }
    }

    fn status(r: Result<(), Reply>) -> Option<u16> {
        r.err().map(|reply| reply.status.as_u16())
    }

    #[test]
    fn verifier_rejects_what_aws_would() {
        let keys = AwsKeys::example();
        assert_eq!(status(verify(&signed(&keys, b"{}", false), &keys, "us-east-1")), None);
        let mut altered = signed(&keys, b"{\"a\":1}", false);
        altered.body = Bytes::from_static(b"{\"a\":2}");
        assert_eq!(status(verify(&altered, &keys, "us-east-1")), Some(403), "altered body");
        let mut other = keys.clone();
        other.secret_access_key = "x".into();
        assert_eq!(status(verify(&signed(&other, b"{}", false), &keys, "us-east-1")), Some(403), "wrong secret");
        assert_eq!(status(verify(&signed(&keys, b"{}", false), &keys, "eu-west-1")), Some(403), "wrong region");
        let mut with_token = keys.clone();
        with_token.session_token = Some("TOKEN".into());
        assert_eq!(status(verify(&signed(&with_token, b"{}", true), &with_token, "us-east-1")), None);
        assert_eq!(status(verify(&signed(&with_token, b"{}", false), &with_token, "us-east-1")), Some(403), "missing session token");
        let mut unsigned = signed(&keys, b"{}", false);
        unsigned.headers.remove("authorization");
        assert_eq!(status(verify(&unsigned, &keys, "us-east-1")), Some(403));
    }

    /// The fake's verifier reproduces the AWS test-suite signatures, so it is a fair judge.
    #[test]
    fn verifier_matches_the_aws_test_suite() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let mut h = HeaderMap::new();
        h.insert("host", "example.amazonaws.com".parse().unwrap());
        h.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let sig = sigv4_signature("POST", "/", "", &h, &["host", "x-amz-date"], b"", secret, "20150830T123600Z", "us-east-1", "service");
        assert_eq!(sig, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
        h.insert("x-amz-security-token", "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267".parse().unwrap());
        let sig = sigv4_signature(
            "GET",
            "/",
            "",
            &h,
            &["host", "x-amz-date", "x-amz-security-token"],
            b"",
            secret,
            "20150830T123600Z",
            "us-east-1",
            "service",
        );
        assert_eq!(sig, "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8");
    }
}
