//! Route and plugin configuration for aigw: the one JSON shape used by routes files,
//! the REST admin API, gRPC (as proto3 JSON) and `/config_dump` (CONTRACT §2).
//!
//! Pure: no I/O (`ring` only loads service-account keys, see `gcp`). Generated proto types stop here (`proto_json`).

pub mod budget;
pub mod consumer;
pub mod gcp;
pub mod keyauth;
pub mod multi;
pub mod plugins;
pub mod prices;
pub mod proto_json;
pub mod ratelimit;
pub mod restriction;
pub mod route;
pub mod secrets;
pub mod snapshot;
pub mod spec;
pub mod strict;
pub mod vars;

pub use route::{AiProxyConfig, Provider, Route, ValidationError};
pub use spec::RouteSpec;
