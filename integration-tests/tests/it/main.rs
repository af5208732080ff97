//! One integration-test binary: every scenario starts the real binaries on
//! 127.0.0.1:0 ports and talks to them over real sockets; only the LLM providers
//! are fakes.

mod anthropic;
mod bedrock;
mod budgets;
mod common;
mod config_plane;
mod consumer_admin;
mod consumers;
mod etcd;
mod limits;
mod multi;
mod observability;
mod pipeline;
mod standalone;
mod streams;
mod token_cache;
mod vertex;
