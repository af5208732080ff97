//! LLM protocol knowledge for aigw, free of I/O so it can be unit-tested, fuzzed and
//! benchmarked: which protocol a request speaks, where each provider serves it, how a
//! body is shaped for the provider, how SSE is framed, and where usage hides.

pub mod anthropic;
pub mod bedrock;
pub mod eventstream;
pub mod openai_to_anthropic;
pub mod protocol;
pub mod shaping;
pub mod sse;
pub mod stream;
pub mod usage;
