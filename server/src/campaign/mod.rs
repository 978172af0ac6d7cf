//! Patch campaigns, the pure domain: what a campaign spec means, the plan frozen at submission,
//! the failure budget, which hosts may start now, the campaign and host state machines, the
//! canary soak rule and four-eyes approval.
//!
//! Why a layer of its own: the engine (a task owning a campaign's state, persistence, the SSH
//! executor, gRPC) and a later web console must agree on one answer to every "may this happen
//! now?" question, and those answers must be testable without a server, a clock or a network.
//!
//! What it may call: `muster` (pb messages, `selector`, `window`, `names`), `crate::model`
//! (validation rules and `ApiError`), `sha2` and `serde_json` (the digest). Never tonic, sled,
//! tokio, russh, or the clock: time is always a parameter (`now`, Unix seconds, the granularity
//! of `muster::window`).
//!
//! Flow for the engine: [`CampaignSpec::parse`] (validation) → [`Calendar::new`] (windows over
//! a horizon) → [`plan::plan`] (frozen [`Plan`]) → [`digest::digest`] → approvals
//! ([`approval`]) → campaign transitions ([`state::apply`]) → on every tick [`schedule::decide`]
//! (who starts, or until when to sleep) and [`schedule::step_fit`] before each step → host
//! transitions ([`host::apply`]) → [`soak::verdict`] after the canaries.

pub mod approval;
pub mod budget;
pub mod calendar;
pub mod digest;
pub mod error;
pub mod frozen;
pub mod host;
pub mod order;
pub mod plan;
pub mod render;
pub mod schedule;
pub mod soak;
pub mod spec;
pub mod state;
mod validate;

#[cfg(test)]
mod tests;

pub use calendar::Calendar;
pub use error::CampaignError;
pub use host::HostState;
pub use plan::Plan;
pub use spec::CampaignSpec;
pub use state::CampaignState;

/// Labels of a device, as the selector and window code read them.
pub type Labels = std::collections::BTreeMap<String, String>;
