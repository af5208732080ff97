//! The xDS transport for aigw config: a server that publishes typed resources (Envoy's
//! `Resource` shape: type URL, name, version, payload) with delta semantics after a
//! full first set, and a client that applies each update whole and ACKs it. It moves
//! resources and knows nothing of what they mean; validation is the applier's job.

pub mod client;
pub mod server;

pub use client::{Applier, ApplyRejected, ClientConfig, ClientStats, Update};
pub use server::{Metrics, NodeStatus, Snapshot, TypeSet, XdsServer, secret_eq};
