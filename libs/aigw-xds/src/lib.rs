//! xDS state-of-the-world transport for aigw snapshots: a server that publishes
//! versioned route sets and a client that applies them. It moves proto routes and
//! knows nothing of what a route means; validation is the applier's job.

pub mod client;
pub mod server;

pub use client::{Applier, ClientConfig};
pub use server::{Metrics, NodeStatus, Snapshot, XdsServer};
