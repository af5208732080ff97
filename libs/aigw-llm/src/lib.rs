//! LLM protocol knowledge for aigw, free of I/O so it can be unit-tested, fuzzed and
//! benchmarked: which protocol a request speaks, how each protocol converts to the
//! others, how SSE and AWS event-stream are framed, where usage hides, and what an error
//! looks like in each protocol. Providers (where and how to reach them) are
//! `aigw-providers`.

/// Test corpus (the golden files' documents), for tests here and in dependent crates.
#[cfg(any(test, feature = "oracle"))]
pub mod corpus;

pub mod anthropic;
pub mod bedrock;
pub mod body;
pub mod envelope;
pub mod eventstream;
pub mod openai_to_anthropic;
pub mod protocol;
pub mod scan;
pub mod sse;
pub mod stream;
pub mod usage;
pub mod vertex;
