//! The campaign engine: one long-lived task per server that owns every campaign's state,
//! fed by a closed enum of events ([`engine::Event`]: an operator command, a step finished,
//! a timer tick, shutdown). Readers get answers by message (Get, Report) or from a published
//! snapshot (List, Watch), never by locking the engine's state.
//!
//! Each round: handle queued events → advance hosts and schedule (pure `campaign::*`
//! decisions) → commit every record written this round and wait until it is durable → only
//! then answer commands and dispatch steps. So a step's intent is always on disk before the
//! step runs, and an answer never shows state a crash could take back.
//!
//! Time only from `inventory.clock()`. Side effects only while the [`lease::CampaignLease`]
//! is held. Steps run through the [`executor::Executor`] seam; hosts are seen through the
//! [`observe::Observer`] seam.

pub mod commands;
mod commit;
pub mod drive;
pub mod engine;
pub mod executor;
pub mod fleet;
pub mod host_audit;
pub mod lease;
pub mod load;
pub mod observe;
pub mod overlay;
pub mod records;
pub mod recover;
pub mod remote;
pub mod resume;
pub mod view;
mod window_watch;

#[cfg(test)]
mod tests;

pub use engine::{Campaigns, Command, HostAction, Parts, Reply};
