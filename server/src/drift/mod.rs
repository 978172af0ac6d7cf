//! Desired state and drift: what each device should be (`desired`: profiles by priority, then
//! the device's own spec), where what it reports differs and why (`compare`), kept current by
//! one task that owns the caches (`engine`, asked through `handle`, with its state in `state`,
//! the observed side in `views` and its answers in `query`), and the configuration workflow built on it (`plan`:
//! plan, atomic apply, drift, accept).
//!
//! May call: `store` (reads, the event log, auxiliary records, the engine's own device
//! writes), `inventory` (change preparation, device loads, the clock), `observed` (facts
//! keys), `model`. Not `grpc`: handlers call `plan::Planner`. `desired`, `compare` and `query`
//! are pure logic over values.

pub mod compare;
pub mod desired;
pub mod engine;
pub mod handle;
pub mod overlays;
pub mod plan;
mod query;
mod state;
mod views;

pub use engine::{Event, Query};
pub use handle::{DriftEngine, EngineStatus, Mailbox, Notifier, PassStats, Progress, mailbox};
pub use plan::Planner;
pub use query::{PlannedChange, PlannedDevice};
pub use views::view_of;

use crate::model::ApiError;
use crate::store::StoreError;

/// Auxiliary key prefix of the per-device drift memory.
pub const MEMORY_PREFIX: &[u8] = crate::aux_keys::DRIFT_MEMORY.as_bytes();

/// Auxiliary key of a device's drift memory (removed in the batch that deletes the device).
pub fn memory_key(device_id: &str) -> Vec<u8> {
    let mut k = MEMORY_PREFIX.to_vec();
    k.extend_from_slice(device_id.as_bytes());
    k
}

fn store_err(e: StoreError) -> ApiError {
    crate::store_map::api_error("drift", "", e)
}

#[cfg(test)]
mod tests;
