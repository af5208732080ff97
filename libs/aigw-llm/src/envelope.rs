//! Every error body a client can receive, in its own protocol, built in one place:
//!
//! | client | a whole (non-streamed) error | the terminal error of a stream |
//! |---|---|---|
//! | OpenAI chat, embeddings | `{"error":{"message","type","param","code"}}` | `data: {"error":{…}}` |
//! | OpenAI Responses | same JSON | `event: error` + `{"type":"error","code","message",…}` |
//! | Anthropic Messages | `{"type":"error","error":{"type","message"}}` | `event: error` + the same JSON |
//! | Bedrock Converse | OpenAI's JSON plus a top-level `message`, and an `x-amzn-errortype` header | an exception frame |
//!
//! The status → type tables (Anthropic's error types, Bedrock's exception names) live
//! here and nowhere else.

use serde_json::json;

use crate::eventstream;
use crate::protocol::Protocol;

/// Which error envelope a client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    OpenAi,
    Responses,
    Anthropic,
    Bedrock,
}

impl Envelope {
    /// Decided by the request path alone, so it is known before routing and before the
    /// body is read (CONTRACT §7: `/v1/messages` → Anthropic, otherwise OpenAI; aigw also
    /// answers boto3 at `…/converse[-stream]` in Bedrock's shape).
    pub fn for_path(path: &str) -> Envelope {
        if path.ends_with("/v1/messages") || path.ends_with("/v1/messages/count_tokens") {
            Envelope::Anthropic
        } else if path.ends_with("/converse") || path.ends_with("/converse-stream") {
            Envelope::Bedrock
        } else if path.ends_with("/v1/responses") {
            Envelope::Responses
        } else {
            Envelope::OpenAi
        }
    }

    /// The envelope of a detected client protocol.
    pub fn for_protocol(p: Protocol) -> Envelope {
        match p {
            Protocol::AnthropicMessages | Protocol::AnthropicCountTokens => Envelope::Anthropic,
            Protocol::OpenAiResponses => Envelope::Responses,
            Protocol::BedrockConverse => Envelope::Bedrock,
            Protocol::OpenAiChat | Protocol::OpenAiEmbeddings | Protocol::Passthrough | Protocol::VertexPredict => Envelope::OpenAi,
        }
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// OpenAI's error `type` for an HTTP status, when the error has no more specific one.
pub fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Bedrock's exception name for an HTTP status (the `x-amzn-errortype` header of a whole
/// error; boto3 raises `client.exceptions.<name>`).
pub fn bedrock_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 | 504 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// The exception frame name inside a Bedrock stream (camelCase, as ConverseStream sends).
fn bedrock_stream_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "validationException",
        429 => "throttlingException",
        503 | 529 => "serviceUnavailableException",
        424 => "modelStreamErrorException",
        _ => "internalServerException",
    }
}

/// What a refusal made by a policy means, whatever status the operator chose for it
/// (`rejected_code` may be 503 for a rate limit): each protocol names it its own way, so
/// an SDK raises the right exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No or an unknown credential (key-auth).
    Auth,
    /// A known caller that may not use this route (consumer-restriction).
    Permission,
    /// A token rate limit is spent (ai-rate-limiting).
    RateLimit,
    /// A spend budget is used up (ai-budget).
    Quota,
}

impl Class {
    /// OpenAI's `type` (OpenAI itself answers an unknown key with `invalid_request_error`,
    /// a spent quota with `insufficient_quota`).
    pub fn openai(self) -> &'static str {
        match self {
            Class::Auth => "invalid_request_error",
            Class::Permission => "permission_error",
            Class::RateLimit => "rate_limit_exceeded",
            Class::Quota => "insufficient_quota",
        }
    }

    pub fn anthropic(self) -> &'static str {
        match self {
            Class::Auth => "authentication_error",
            Class::Permission => "permission_error",
            Class::RateLimit | Class::Quota => "rate_limit_error",
        }
    }

    /// Bedrock's exception name (whole errors; streams never carry a refusal).
    pub fn bedrock(self) -> &'static str {
        match self {
            Class::Auth => "UnrecognizedClientException",
            Class::Permission => "AccessDeniedException",
            Class::RateLimit | Class::Quota => "ThrottlingException",
        }
    }
}

/// One error: the status it maps to, OpenAI's `type` and `code`, and the message.
#[derive(Debug, Clone, Copy)]
pub struct Error<'a> {
    pub status: u16,
    /// OpenAI `type`; None: derived from the status (or from `class`).
    pub kind: Option<&'a str>,
    /// Machine-readable code (OpenAI `code`, Responses `code`).
    pub code: &'a str,
    pub message: &'a str,
    /// A policy refusal: every protocol's type comes from it rather than the status.
    pub class: Option<Class>,
}

impl Error<'_> {
    fn openai_kind(&self) -> &str {
        self.kind.or(self.class.map(Class::openai)).unwrap_or_else(|| openai_type(self.status))
    }

    fn anthropic_kind(&self) -> &'static str {
        self.class.map_or_else(|| anthropic_type(self.status), Class::anthropic)
    }

    /// The `x-amzn-errortype` of this error as a whole Bedrock answer.
    pub fn bedrock_kind(&self) -> &'static str {
        self.class.map_or_else(|| bedrock_type(self.status), Class::bedrock)
    }
}

/// A whole error body (`Content-Type: application/json`). For [`Envelope::Bedrock`] the
/// caller also sets `x-amzn-errortype: `[`Error::bedrock_kind`].
pub fn json(env: Envelope, e: &Error<'_>) -> Vec<u8> {
    let v = match env {
        Envelope::OpenAi | Envelope::Responses => {
            json!({"error": {"message": e.message, "type": e.openai_kind(), "param": null, "code": e.code}})
        }
        Envelope::Anthropic => json!({"type": "error", "error": {"type": e.anthropic_kind(), "message": e.message}}),
        // CONTRACT §7: gateway errors are OpenAI-shaped unless the client is Anthropic;
        // boto3 also finds its `message` at the top level (and its exception name in the
        // `x-amzn-errortype` header).
        Envelope::Bedrock => {
            json!({"message": e.message, "error": {"message": e.message, "type": e.openai_kind(), "param": null, "code": e.code}})
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The terminal error of a stream the client reads in protocol `client`: one whole event
/// (or frame) that the official SDKs raise as their API error.
pub fn stream(client: Protocol, e: &Error<'_>) -> Vec<u8> {
    match Envelope::for_protocol(client) {
        Envelope::Responses => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "code": e.code, "message": e.message, "param": null, "sequence_number": 0})
        )
        .into_bytes(),
        Envelope::Anthropic => {
            format!("event: error\ndata: {}\n\n", json!({"type": "error", "error": {"type": e.anthropic_kind(), "message": e.message}}))
                .into_bytes()
        }
        Envelope::Bedrock => eventstream::exception(bedrock_stream_type(e.status), e.message),
        Envelope::OpenAi => {
            format!("data: {}\n\n", json!({"error": {"message": e.message, "type": e.openai_kind(), "param": null, "code": e.code}}))
                .into_bytes()
        }
    }
}

/// The human-readable message of any upstream error body: OpenAI's `error.message`,
/// Anthropic's, Bedrock's `message`/`Message`, an `error` string, or the text itself
/// (first 2 KiB), so a converted error keeps what the provider said.
pub fn message_of(status: u16, body: &[u8]) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = v
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("Message")).or_else(|| v.get("error")))
        .and_then(|m| m.as_str().map(str::to_owned).or_else(|| Some(m.to_string())))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(2048)]).trim().to_owned());
    if message.is_empty() { format!("upstream returned status {status}") } else { message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::Decoder;
    use crate::sse::Parser;
    use serde_json::Value;

    fn err(status: u16) -> Error<'static> {
        Error { status, kind: None, code: "c", message: "boom \"quoted\"\nline", class: None }
    }

    /// Every status × envelope gives well-formed JSON with the table's type.
    #[test]
    fn whole_errors_for_each_status_and_protocol() {
        let table: &[(u16, &str, &str, &str)] = &[
            (400, "invalid_request_error", "invalid_request_error", "ValidationException"),
            (401, "authentication_error", "authentication_error", "AccessDeniedException"),
            (403, "permission_error", "permission_error", "AccessDeniedException"),
            (404, "not_found_error", "not_found_error", "ResourceNotFoundException"),
            (413, "invalid_request_error", "request_too_large", "ValidationException"),
            (429, "rate_limit_error", "rate_limit_error", "ThrottlingException"),
            (500, "api_error", "api_error", "InternalServerException"),
            (502, "api_error", "api_error", "InternalServerException"),
            (503, "api_error", "overloaded_error", "ServiceUnavailableException"),
            (504, "api_error", "timeout_error", "ModelTimeoutException"),
        ];
        for &(status, openai, anthropic, bedrock) in table {
            let e = err(status);
            for env in [Envelope::OpenAi, Envelope::Responses] {
                let v: Value = serde_json::from_slice(&json(env, &e)).unwrap();
                assert_eq!(v["error"]["type"], openai, "{status}");
                assert_eq!(v["error"]["code"], "c");
                assert_eq!(v["error"]["message"], e.message);
            }
            let v: Value = serde_json::from_slice(&json(Envelope::Anthropic, &e)).unwrap();
            assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some(anthropic)), "{status}");
            let v: Value = serde_json::from_slice(&json(Envelope::Bedrock, &e)).unwrap();
            assert_eq!((&v["message"], &v["error"]["message"]), (&json!(e.message), &json!(e.message)));
            assert_eq!(bedrock_type(status), bedrock, "{status}");
        }
        let explicit = Error { status: 400, kind: Some("invalid_request_error"), code: "route_not_found", message: "m", class: None };
        let v: Value = serde_json::from_slice(&json(Envelope::OpenAi, &explicit)).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
    }

    /// A policy refusal keeps its meaning whatever status the operator gave it.
    #[test]
    fn refusal_classes_name_each_protocols_type() {
        for (class, status, openai, anthropic, bedrock) in [
            (Class::Auth, 401, "invalid_request_error", "authentication_error", "UnrecognizedClientException"),
            (Class::Permission, 403, "permission_error", "permission_error", "AccessDeniedException"),
            (Class::RateLimit, 503, "rate_limit_exceeded", "rate_limit_error", "ThrottlingException"),
            (Class::RateLimit, 429, "rate_limit_exceeded", "rate_limit_error", "ThrottlingException"),
            (Class::Quota, 429, "insufficient_quota", "rate_limit_error", "ThrottlingException"),
        ] {
            let e = Error { status, kind: None, code: "x", message: "m", class: Some(class) };
            let v: Value = serde_json::from_slice(&json(Envelope::OpenAi, &e)).unwrap();
            assert_eq!(v["error"]["type"], openai, "{class:?}");
            let v: Value = serde_json::from_slice(&json(Envelope::Anthropic, &e)).unwrap();
            assert_eq!(v["error"]["type"], anthropic, "{class:?}");
            assert_eq!(e.bedrock_kind(), bedrock, "{class:?}");
        }
    }

    /// Each stream terminator is exactly one whole event that parses back.
    #[test]
    fn stream_terminators_are_whole_events() {
        for client in [Protocol::OpenAiChat, Protocol::OpenAiResponses, Protocol::AnthropicMessages, Protocol::Passthrough] {
            let bytes = stream(client, &err(502));
            let mut p = Parser::new();
            let mut evs = Vec::new();
            p.push(&bytes, &mut evs);
            assert_eq!(evs.len(), 1, "{client:?}");
            assert_eq!(p.boundary(), bytes.len() as u64, "{client:?}");
            let v: Value = serde_json::from_str(&evs[0].data).unwrap();
            match client {
                Protocol::OpenAiResponses => assert_eq!((evs[0].event.as_str(), v["type"].as_str()), ("error", Some("error"))),
                Protocol::AnthropicMessages => {
                    assert_eq!((evs[0].event.as_str(), v["error"]["type"].as_str()), ("error", Some("api_error")))
                }
                _ => assert_eq!(v["error"]["message"], "boom \"quoted\"\nline"),
            }
        }
        for (status, kind) in [(502, "internalServerException"), (429, "throttlingException"), (400, "validationException")] {
            let mut msgs = Vec::new();
            Decoder::new().push(&stream(Protocol::BedrockConverse, &err(status)), &mut msgs).unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!((msgs[0].message_type(), msgs[0].kind()), ("exception", kind));
        }
    }

    #[test]
    fn upstream_messages() {
        assert_eq!(message_of(429, br#"{"error":{"message":"slow down","type":"requests"}}"#), "slow down");
        assert_eq!(message_of(400, br#"{"message":"bad model"}"#), "bad model");
        assert_eq!(message_of(400, br#"{"Message":"bad"}"#), "bad");
        assert_eq!(message_of(401, br#"{"error":"invalid_grant"}"#), "invalid_grant");
        assert_eq!(message_of(502, b"  <html>x</html> "), "<html>x</html>");
        assert_eq!(message_of(503, b""), "upstream returned status 503");
    }

    #[test]
    fn envelopes_by_path() {
        assert_eq!(Envelope::for_path("/v1/messages"), Envelope::Anthropic);
        assert_eq!(Envelope::for_path("/x/v1/messages/count_tokens"), Envelope::Anthropic);
        assert_eq!(Envelope::for_path("/model/m/converse-stream"), Envelope::Bedrock);
        assert_eq!(Envelope::for_path("/v1/responses"), Envelope::Responses);
        assert_eq!(Envelope::for_path("/v1/chat/completions"), Envelope::OpenAi);
    }
}
