//! Request body shaping, in APISIX's order with its known bugs fixed:
//!
//! 1. `options`: flat overwrite of top-level fields (the route owner decides).
//! 2. `override.llm_options.max_tokens`: always forced, written to the field the
//!    provider/endpoint expects (OpenAI chat: `max_completion_tokens`, and `max_tokens`
//!    removed; Responses: `max_output_tokens`; Bedrock: `inferenceConfig.maxTokens`).
//! 3. `override.request_body[<target protocol>]`: deep merge (objects recurse, anything
//!    else replaces); fills gaps unless `request_body_force_override`.
//! 4. Protocol shaping from the *final* body: an OpenAI chat stream gets
//!    `stream_options.include_usage: true` merged in (APISIX injects it before `options`,
//!    so `options.stream: true` streams without usage, and it replaces the client's
//!    `stream_options` object).
//! 5. Providers that take the model from the URL (azure-openai) lose `model`.
//!
//! Beyond APISIX: an OpenAI chat request's `max_tokens` (deprecated, rejected by
//! reasoning models) is renamed `max_completion_tokens` for `provider: openai`.

use aigw_llm::body::{FieldsMut, Json, Kind};
use aigw_model::Provider;
use serde_json::{Map, Value};

use aigw_llm::protocol::Protocol;

pub struct Shaping<'a> {
    pub provider: Provider,
    /// The protocol the upstream receives.
    pub target: Protocol,
    pub options: Option<&'a Map<String, Value>>,
    pub max_tokens: Option<u64>,
    pub request_body: Option<&'a Map<String, Value>>,
    pub force_request_body: bool,
}

/// Where `llm_options.max_tokens` goes for a provider and target protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensField {
    Top(&'static str),
    /// `inferenceConfig.maxTokens` (Bedrock Converse).
    InferenceConfig,
    None,
}

pub fn max_tokens_field(provider: Provider, target: Protocol) -> MaxTokensField {
    use MaxTokensField::*;
    match target {
        Protocol::OpenAiChat => match provider {
            Provider::Openai | Provider::Gemini | Provider::VertexAi => Top("max_completion_tokens"),
            _ => Top("max_tokens"),
        },
        Protocol::OpenAiResponses => Top("max_output_tokens"),
        Protocol::AnthropicMessages => Top("max_tokens"),
        Protocol::AnthropicCountTokens => None,
        Protocol::BedrockConverse => InferenceConfig,
        Protocol::OpenAiEmbeddings | Protocol::Passthrough | Protocol::VertexPredict => None,
    }
}

/// Shapes `body` in place; returns whether anything changed (an unchanged body is
/// forwarded byte-for-byte). `body` is a parsed `Value` or a request's raw form
/// ([`aigw_llm::body::Doc`]): the same steps read and edit top-level fields, and only the
/// fields an edit goes into are parsed (`stream_options`, `inferenceConfig`, an object of
/// `request_body` merged into the client's).
pub fn shape<B: FieldsMut + ?Sized>(body: &mut B, s: &Shaping<'_>) -> bool {
    if !body.is_object() {
        return false;
    }
    let mut changed = false;
    if let Some(opts) = s.options {
        for (k, v) in opts {
            if !body.field(k).is_some_and(|f| f.eq_value(v)) {
                body.insert(k, v.clone());
                changed = true;
            }
        }
    }
    let openai_chat = s.provider == Provider::Openai && s.target == Protocol::OpenAiChat;
    if openai_chat
        && !body.contains_key("max_completion_tokens")
        && let Some(v) = body.remove("max_tokens")
    {
        body.insert("max_completion_tokens", v);
        changed = true;
    }
    if let Some(n) = s.max_tokens {
        let v = Value::from(n);
        match max_tokens_field(s.provider, s.target) {
            MaxTokensField::Top(field) => {
                if !body.field(field).is_some_and(|f| f.eq_value(&v)) {
                    body.insert(field, v);
                    changed = true;
                }
                if openai_chat && body.remove("max_tokens").is_some() {
                    changed = true;
                }
            }
            MaxTokensField::InferenceConfig => {
                let set = body.field("inferenceConfig").and_then(|ic| ic.get("maxTokens")).is_some_and(|m| m.eq_value(&v));
                if !set && let Some(ic) = object_field(body, "inferenceConfig") {
                    ic.insert("maxTokens".into(), v);
                    changed = true;
                }
            }
            MaxTokensField::None => {}
        }
    }
    if let Some(patch) = s.request_body {
        changed |= deep_merge(body, patch, s.force_request_body);
    }
    if s.target == Protocol::OpenAiChat && body.field("stream").and_then(Json::as_bool) == Some(true) {
        let set = body.field("stream_options").and_then(|so| so.get("include_usage")).is_some_and(|u| u.eq_value(&Value::Bool(true)));
        if !set && let Some(so) = object_field(body, "stream_options") {
            so.insert("include_usage".into(), Value::Bool(true));
            changed = true;
        }
    }
    if s.provider == Provider::AzureOpenai && body.remove("model").is_some() {
        changed = true;
    }
    changed
}

/// The object at `key`, made one (an empty object) when it is missing or something else
/// (None only on a body that is not an object, which shaping never edits).
fn object_field<'b, B: FieldsMut + ?Sized>(body: &'b mut B, key: &str) -> Option<&'b mut Map<String, Value>> {
    if !body.field(key).is_some_and(|f| f.is_object()) {
        body.insert(key, Value::Object(Map::new()));
    }
    body.get_mut(key)?.as_object_mut()
}

/// Deep merge: both objects → recurse; otherwise the patch replaces the target value
/// when `force` or when the target has no such field. Returns whether anything changed.
/// At the top level of a raw body only the objects merged into are parsed.
pub fn deep_merge<B: FieldsMut + ?Sized>(target: &mut B, patch: &Map<String, Value>, force: bool) -> bool {
    let mut changed = false;
    for (k, pv) in patch {
        match target.field(k).map(Json::kind) {
            None => {
                target.insert(k, pv.clone());
                changed = true;
            }
            Some(Kind::Object) if pv.is_object() => {
                if let (Some(Value::Object(to)), Value::Object(po)) = (target.get_mut(k), pv) {
                    changed |= deep_merge(to, po, force);
                }
            }
            Some(_) => {
                if force && !target.field(k).is_some_and(|tv| tv.eq_value(pv)) {
                    target.insert(k, pv.clone());
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Case {
        provider: Provider,
        target: Protocol,
        options: Value,
        max_tokens: Option<u64>,
        request_body: Value,
        force: bool,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                provider: Provider::Openai,
                target: Protocol::OpenAiChat,
                options: json!({}),
                max_tokens: None,
                request_body: json!({}),
                force: false,
            }
        }
    }

    /// Shapes `body` with `case` and compares with `expect` (None: body unchanged).
    fn check(case: Case, body: Value, expect: Option<Value>) {
        let mut b = body.clone();
        let s = Shaping {
            provider: case.provider,
            target: case.target,
            options: case.options.as_object().filter(|o| !o.is_empty()),
            max_tokens: case.max_tokens,
            request_body: case.request_body.as_object().filter(|o| !o.is_empty()),
            force_request_body: case.force,
        };
        let changed = shape(&mut b, &s);
        // The raw form shapes to the same JSON, with the same verdict.
        let raw = aigw_llm::body::RawBody::parse(serde_json::to_vec(&body).unwrap().into()).unwrap();
        let mut doc = aigw_llm::body::Doc::of(&raw);
        assert_eq!(shape(&mut doc, &s), changed, "raw form: {body}");
        assert_eq!(serde_json::from_slice::<Value>(&doc.to_vec()).unwrap(), b, "raw form: {body}");
        match expect {
            None => {
                assert!(!changed, "unexpected change: {b}");
                assert_eq!(b, body);
            }
            Some(e) => {
                assert!(changed);
                assert_eq!(b, e);
            }
        }
    }

    #[test]
    fn unchanged_bodies_stay_unchanged() {
        check(Case::default(), json!({"model": "m", "messages": []}), None);
        check(Case { options: json!({"model": "m"}), ..Default::default() }, json!({"model": "m", "messages": []}), None);
        check(Case { target: Protocol::OpenAiResponses, ..Default::default() }, json!({"input": "x", "stream": true}), None);
    }

    #[test]
    fn options_overwrite_client_fields() {
        check(
            Case { options: json!({"model": "gpt-4", "temperature": 0.1, "extra": {"a": 1}}), ..Default::default() },
            json!({"model": "client", "temperature": 1, "extra": {"b": 2}, "messages": []}),
            Some(json!({"model": "gpt-4", "temperature": 0.1, "extra": {"a": 1}, "messages": []})),
        );
    }

    #[test]
    fn max_tokens_table() {
        let row = |provider, target, field: &str| {
            let mut e = json!({"messages": []});
            e[field] = json!(100);
            check(Case { provider, target, max_tokens: Some(100), ..Default::default() }, json!({"messages": []}), Some(e));
        };
        use Protocol::*;
        row(Provider::Openai, OpenAiChat, "max_completion_tokens");
        row(Provider::Openai, OpenAiResponses, "max_output_tokens");
        row(Provider::OpenaiCompatible, OpenAiChat, "max_tokens");
        row(Provider::OpenaiCompatible, OpenAiResponses, "max_output_tokens");
        row(Provider::AzureOpenai, OpenAiChat, "max_tokens");
        row(Provider::Deepseek, OpenAiChat, "max_tokens");
        row(Provider::Aimlapi, OpenAiChat, "max_tokens");
        row(Provider::Openrouter, OpenAiChat, "max_tokens");
        row(Provider::Gemini, OpenAiChat, "max_completion_tokens");
        row(Provider::VertexAi, OpenAiChat, "max_completion_tokens");
        row(Provider::Anthropic, OpenAiChat, "max_tokens");
        row(Provider::Anthropic, AnthropicMessages, "max_tokens");
        check(
            Case { provider: Provider::Bedrock, target: BedrockConverse, max_tokens: Some(7), ..Default::default() },
            json!({"messages": [], "inferenceConfig": {"temperature": 0.5}}),
            Some(json!({"messages": [], "inferenceConfig": {"temperature": 0.5, "maxTokens": 7}})),
        );
        check(Case { target: OpenAiEmbeddings, max_tokens: Some(7), ..Default::default() }, json!({"input": "x"}), None);
    }

    #[test]
    fn llm_options_always_force_and_openai_drops_max_tokens() {
        check(
            Case { max_tokens: Some(555), ..Default::default() },
            json!({"messages": [], "max_tokens": 999, "max_completion_tokens": 1}),
            Some(json!({"messages": [], "max_completion_tokens": 555})),
        );
        check(
            Case { provider: Provider::OpenaiCompatible, max_tokens: Some(555), ..Default::default() },
            json!({"messages": [], "max_tokens": 999}),
            Some(json!({"messages": [], "max_tokens": 555})),
        );
        // Without llm_options, an OpenAI client's deprecated max_tokens is renamed.
        check(Case::default(), json!({"messages": [], "max_tokens": 10}), Some(json!({"messages": [], "max_completion_tokens": 10})));
        check(Case { provider: Provider::Deepseek, ..Default::default() }, json!({"messages": [], "max_tokens": 10}), None);
    }

    #[test]
    fn request_body_merge_modes_and_precedence() {
        let rb = json!({"temperature": 0.2, "metadata": {"team": "ml", "tier": "gold"}, "stop": ["x"]});
        let body = json!({"messages": [], "temperature": 1, "metadata": {"team": "web"}, "stop": ["a", "b"]});
        check(
            Case { request_body: rb.clone(), ..Default::default() },
            body.clone(),
            Some(json!({"messages": [], "temperature": 1, "metadata": {"team": "web", "tier": "gold"}, "stop": ["a", "b"]})),
        );
        check(
            Case { request_body: rb, force: true, ..Default::default() },
            body,
            Some(json!({"messages": [], "temperature": 0.2, "metadata": {"team": "ml", "tier": "gold"}, "stop": ["x"]})),
        );
        // request_body runs after llm_options, so it can override them.
        check(
            Case { max_tokens: Some(100), request_body: json!({"max_completion_tokens": 200}), force: true, ..Default::default() },
            json!({"messages": []}),
            Some(json!({"messages": [], "max_completion_tokens": 200})),
        );
        // Type mismatch: the patch replaces when forced.
        check(
            Case { request_body: json!({"metadata": "s"}), force: true, ..Default::default() },
            json!({"metadata": {"a": 1}}),
            Some(json!({"metadata": "s"})),
        );
    }

    #[test]
    fn stream_usage_is_forced_also_when_stream_comes_from_options() {
        check(
            Case { options: json!({"stream": true}), ..Default::default() },
            json!({"messages": []}),
            Some(json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}})),
        );
        check(
            Case::default(),
            json!({"messages": [], "stream": true, "stream_options": {"include_obfuscation": false}}),
            Some(json!({"messages": [], "stream": true, "stream_options": {"include_obfuscation": false, "include_usage": true}})),
        );
        check(Case::default(), json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}}), None);
        check(Case::default(), json!({"messages": [], "stream": false}), None);
    }

    #[test]
    fn azure_strips_model() {
        check(
            Case { provider: Provider::AzureOpenai, options: json!({"model": "gpt-4"}), ..Default::default() },
            json!({"messages": [], "model": "x"}),
            Some(json!({"messages": []})),
        );
    }
}
