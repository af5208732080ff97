//! Instance picking and health for `ai-proxy-multi` (CONTRACT §9), free of I/O so the
//! rules are unit-tested on their own and cost no lock on the request path.
//!
//! * [`Balancer`]: one per route and config snapshot. Picks an instance by smooth weighted
//!   round robin or consistent hashing, within priority groups, skipping unhealthy and
//!   already-tried instances; owns each instance's health (passive ejection, active-probe
//!   state) and counters.
//! * [`retry::decide`]: whether a failed attempt is retried on another instance.
//! * [`clock`]: the time source (injectable for tests).
//! * [`config`]: building the above from `aigw_model::multi::AiProxyMultiConfig`.
//! * [`HealthRegistry`]: health kept across config snapshots by route and instance name.
//!
//! The rules, with the reasons for each choice, are in `docs/multi.md`.

pub mod clock;
pub mod config;
pub mod health;
pub mod pick;
pub mod registry;
pub mod retry;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use health::{ActiveState, InstanceHealth, InstanceStatus, PassivePolicy, ProbeResult, ProbeRules};
pub use pick::{Algorithm, Balancer, InstanceSpec};
pub use registry::HealthRegistry;
pub use retry::{Attempt, Decision, FallbackPolicy, GiveUp, Outcome};
