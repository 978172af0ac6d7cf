//! Domain tests against musterd's `Server` in this process, with a manual clock (see kit.rs):
//! time-dependent behaviour is tested by moving the clock, not by sleeping.
#![allow(clippy::unwrap_used)]

mod agents;
mod campaign_desired;
mod campaign_rpc;
mod campaigns;
mod edge;
mod kit;
mod tokens;
