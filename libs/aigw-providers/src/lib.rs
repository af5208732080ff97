//! Providers for aigw, free of sockets so they can be unit-tested from tables: where each
//! provider serves which protocol ([`table`]), how a body is shaped for it ([`shaping`]),
//! the pure plan stage that turns a client request and a target into the upstream request
//! ([`plan`]), and SigV4 signing for Bedrock ([`sigv4`]).
//!
//! This is its own crate (not part of `aigw-llm`) because it knows *providers* — origins,
//! paths, credentials' shape, APISIX's shaping rules — while `aigw-llm` knows *protocols*
//! (formats, converters, framing), which several providers share.

pub mod answer;
pub mod encode;
pub mod plan;
pub mod shaping;
pub mod sigv4;
pub mod table;
pub mod target;
