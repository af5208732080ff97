//! OpenAI embeddings ⇄ Vertex AI `:predict` for text-embedding models
//! (`…/publishers/google/models/{model}:predict`). Pure. Vertex chat needs no converter:
//! its `endpoints/openapi/chat/completions` speaks OpenAI chat.
//!
//! Request (APISIX's rules, `apisix-behaviour.md` §3.6): `input` string → one instance;
//! array → one instance per item, an item that is an array of strings space-joined; any
//! other item → "unsupported input type at index i". `dimensions` →
//! `parameters.outputDimensionality`. `model`, `user` and `encoding_format` stay with the
//! gateway (Google rejects unknown fields): the model goes into the URL, the encoding is
//! applied to the answer.
//!
//! Answer: `predictions[i].embeddings.values` → `data[i].embedding` (floats, or base64 of
//! little-endian f32 when the client asked for `encoding_format: "base64"`, as the
//! official OpenAI SDKs do by default); usage = Σ `statistics.token_count`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::anthropic::ConvertError;

fn err(m: impl Into<String>) -> ConvertError {
    ConvertError(m.into())
}

/// An OpenAI embeddings request as a Vertex `:predict` body.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    /// `{"instances": [{"content": …}, …], "parameters"?: {…}}`
    pub body: Value,
    /// The client wants base64 embeddings (`encoding_format: "base64"`).
    pub base64: bool,
}

/// Converts an OpenAI embeddings request body.
pub fn embeddings_to_predict(body: &Value) -> Result<PredictRequest, ConvertError> {
    let obj = body.as_object().ok_or_else(|| err("the request body must be a JSON object"))?;
    let input = obj.get("input").filter(|v| !v.is_null()).ok_or_else(|| err("`input` is required for embeddings"))?;
    let instance = |content: String| json!({ "content": content });
    let instances: Vec<Value> = match input {
        Value::String(s) => vec![instance(s.clone())],
        Value::Array(items) if items.is_empty() => return Err(err("`input` must not be empty")),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let text = match item {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) if !parts.is_empty() && parts.iter().all(Value::is_string) => {
                        parts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
                    }
                    _ => return Err(err(format!("unsupported input type at index {i}"))),
                };
                out.push(instance(text));
            }
            out
        }
        _ => return Err(err("unsupported input type: `input` must be a string or an array of strings")),
    };
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => return Err(err("`encoding_format` must be \"float\" or \"base64\"")),
    };
    let mut out = Map::new();
    out.insert("instances".into(), Value::Array(instances));
    match obj.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64().is_some_and(|n| n > 0) => {
            out.insert("parameters".into(), json!({ "outputDimensionality": d }));
        }
        Some(_) => return Err(err("`dimensions` must be a positive integer")),
    }
    Ok(PredictRequest { body: Value::Object(out), base64 })
}

/// Converts a Vertex `:predict` answer into an OpenAI embeddings answer for `model`.
pub fn predict_to_embeddings(answer: &Value, model: &str, base64: bool) -> Result<Value, ConvertError> {
    let predictions =
        answer.get("predictions").and_then(Value::as_array).ok_or_else(|| err("the vertex answer has no `predictions` array"))?;
    let mut data = Vec::with_capacity(predictions.len());
    let mut tokens: u64 = 0;
    for (i, p) in predictions.iter().enumerate() {
        let emb = p.get("embeddings").ok_or_else(|| err(format!("vertex prediction {i} has no `embeddings`")))?;
        let values = emb
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("vertex prediction {i} has no `embeddings.values` array")))?;
        if let Some(n) = emb.pointer("/statistics/token_count").and_then(Value::as_f64) {
            tokens += n.max(0.0) as u64;
        }
        let embedding = if base64 {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in values {
                let f = v.as_f64().ok_or_else(|| err(format!("vertex prediction {i} holds a value that is not a number")))?;
                bytes.extend_from_slice(&(f as f32).to_le_bytes());
            }
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            if values.iter().any(|v| !v.is_number()) {
                return Err(err(format!("vertex prediction {i} holds a value that is not a number")));
            }
            Value::Array(values.clone())
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_req(input: Value, expect: Result<Value, &str>) {
        match (embeddings_to_predict(&input), expect) {
            (Ok(got), Ok(want)) => assert_eq!(got.body, want, "{input}"),
            (Err(e), Err(fragment)) => assert!(e.0.contains(fragment), "{input}: {e:?} lacks {fragment:?}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn requests() {
        check_req(json!({"model": "text-embedding-005", "input": "hi"}), Ok(json!({"instances": [{"content": "hi"}]})));
        check_req(
            json!({"model": "m", "input": ["a", ["b", "c"]], "dimensions": 256, "user": "u", "encoding_format": "float"}),
            Ok(json!({"instances": [{"content": "a"}, {"content": "b c"}], "parameters": {"outputDimensionality": 256}})),
        );
        check_req(json!({"model": "m"}), Err("`input` is required for embeddings"));
        check_req(json!({"input": ["a", 5]}), Err("unsupported input type at index 1"));
        check_req(json!({"input": [[1, 2]]}), Err("unsupported input type at index 0"));
        check_req(json!({"input": []}), Err("must not be empty"));
        check_req(json!({"input": 5}), Err("unsupported input type"));
        check_req(json!({"input": "a", "dimensions": 0}), Err("`dimensions` must be a positive integer"));
        check_req(json!({"input": "a", "encoding_format": "hex"}), Err("`encoding_format`"));
        assert!(embeddings_to_predict(&json!({"input": "a", "encoding_format": "base64"})).unwrap().base64);
        assert!(!embeddings_to_predict(&json!({"input": "a"})).unwrap().base64);
    }

    #[test]
    fn answers() {
        let answer = json!({"predictions": [
            {"embeddings": {"values": [0.5, -1.0], "statistics": {"token_count": 3, "truncated": false}}},
            {"embeddings": {"values": [0.25, 2.0], "statistics": {"token_count": 4.0, "truncated": false}}}],
            "metadata": {"billableCharacterCount": 9}});
        assert_eq!(
            predict_to_embeddings(&answer, "text-embedding-005", false).unwrap(),
            json!({"object": "list", "model": "text-embedding-005", "usage": {"prompt_tokens": 7, "total_tokens": 7},
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                            {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]}]})
        );
        let b = predict_to_embeddings(&answer, "m", true).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(b["data"][0]["embedding"].as_str().unwrap()).unwrap();
        let floats: Vec<f32> = raw.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(floats, [0.5, -1.0]);
        for bad in [json!({}), json!({"predictions": [{}]}), json!({"predictions": [{"embeddings": {"values": ["x"]}}]})] {
            assert!(predict_to_embeddings(&bad, "m", false).is_err(), "{bad}");
        }
    }
}
