//! The inventory: create, read, update, delete, apply, watch and audit, as domain operations
//! on `muster.v1` resources. No gRPC here: handlers in `grpc/` convert requests into the inputs
//! of `inputs.rs`, call these, and map `ApiError` to a status in one place (`grpc::status`).
//!
//! Files by job:
//! - `inputs.rs`: what each operation takes (requests are converted at the edge).
//! - `prepare.rs`: the one preparation of a write (validation, merge, sealing, scope, the
//!   mutation), used by create, update, apply and change sets (`planning`).
//! - `write.rs`: create, update, apply and change sets; `delete.rs`: delete, which removes a
//!   device's auxiliary records (facts, drift memory, enrollment) in the same batch.
//! - `read.rs`: Get and List; `query.rs`: selectors, page tokens and page sizes (pure).
//! - `watch.rs`: the event stream; `audit.rs`: the audit listing and the one classification
//!   of refusals; `guards.rs`: refusal rate limits, watch and verify caps, audit verify.
//! - `stored.rs`: the stored form of a resource (encode, decode, show, commit).
//! - `server_writes.rs`: writes the server makes itself (health, annotations, VMs).
//! - `drift_feed.rs`: the drift engine's mailbox (devices whose observed facts changed).
//!
//! May call: `model` (rules of the resources), `store` (through the `Store` trait),
//! `store_map` (store errors as API errors), `scope`, `observed` (reading facts for a Get),
//! `aux_keys` (what a device's delete removes). Never `grpc` or tonic.

use std::sync::Arc;
use std::time::Duration;

use muster::clock::SharedClock;
use muster::pb::ResourceKind;

mod audit;
mod delete;
mod guards;
mod inputs;
mod prepare;
mod query;
mod read;
mod server_writes;
mod ssh_access;
mod stored;
mod watch;
mod write;

pub use audit::{AuditParams, refusal_class, refusal_kind};
pub use inputs::{ApplyInput, CreateInput, DeleteInput, GetInput, UpdateInput, WatchParams};
pub use prepare::PreparedWrite;
pub use read::ListParams;

use crate::limits::Limits;
use crate::model::secrets::SecretBox;
use crate::model::{ApiError, kind_name};
use crate::store::{Store, StoreError};

/// Largest page a List may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// How often an idle watch stream sends a bookmark.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);
/// How many times a write without an expected revision retries a lost race before giving up.
const WRITE_RETRIES: usize = 8;

/// Why and from where a change is made.
#[derive(Debug, Clone, Default)]
pub struct ChangeContext {
    pub reason: String,
    pub ticket: String,
    pub origin: String,
}

impl ChangeContext {
    /// Checks the lengths and characters of reason, ticket and origin.
    pub fn check(&self) -> Result<(), ApiError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ApiError> {
        let limits = [
            ("context.reason", &self.reason, 1024),
            ("context.ticket", &self.ticket, 128),
            ("context.origin", &self.origin, 32),
        ];
        for (field, v, max) in limits {
            if v.len() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("is longer than {max} bytes"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        Ok(())
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
}

/// The inventory: a store plus the rules of the model.
pub struct Inventory {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    /// The one source of time for everything built on the inventory.
    clock: SharedClock,
    /// Flips to true when the server stops, so open watch streams end instead of holding the
    /// graceful shutdown open (clients resume from their last revision elsewhere).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Where observed-state changes are sent to the drift engine.
    drift: crate::drift::Notifier,
    /// Caps on refusal records, watch streams and verifies (`inventory/guards.rs`).
    guards: guards::Guards,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").finish_non_exhaustive()
    }
}

impl Inventory {
    /// Where observed-state changes are sent (the drift engine's mailbox).
    pub fn drift(&self) -> &crate::drift::Notifier {
        &self.drift
    }

    /// An inventory over `store`, sealing credentials with `secrets`, with default limits;
    /// observed-state changes go to the drift engine through `drift`.
    pub fn new(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        clock: SharedClock,
        drift: crate::drift::Notifier,
    ) -> Self {
        Self::with_limits(store, secrets, Limits::default(), clock, drift)
    }

    /// An inventory with the given limits (from the server config).
    pub fn with_limits(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        limits: Limits,
        clock: SharedClock,
        drift: crate::drift::Notifier,
    ) -> Self {
        Self {
            store,
            secrets,
            clock,
            stopping: tokio::sync::watch::channel(false).0,
            drift,
            guards: guards::Guards::new(limits),
        }
    }

    /// The clock everything built on the inventory reads time from.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Unix nanoseconds now, from the injected clock.
    pub fn now_unix_nanos(&self) -> i64 {
        self.clock.now_unix_nanos()
    }

    /// Ends every open watch stream (called when the server shuts down).
    pub fn stop_watches(&self) {
        let _ = self.stopping.send_replace(true);
    }

    /// The underlying store (for admin operations and metrics).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The kind a request names, required.
pub(crate) fn parse_kind(field: &str, kind: i32) -> Result<ResourceKind, ApiError> {
    match ResourceKind::try_from(kind) {
        Ok(ResourceKind::Unspecified) | Err(_) => Err(ApiError::invalid(
            field,
            "is required: one of SITE, RACK, DEVICE, PROFILE, WINDOW, CREDENTIAL",
        )),
        Ok(k) => Ok(k),
    }
}

/// The kind a request names, optional (UNSPECIFIED: every kind).
pub(crate) fn parse_optional_kind(
    field: &str,
    kind: i32,
) -> Result<Option<ResourceKind>, ApiError> {
    match ResourceKind::try_from(kind) {
        Ok(ResourceKind::Unspecified) => Ok(None),
        Ok(k) => Ok(Some(k)),
        Err(_) => Err(ApiError::invalid(
            field,
            format!("{kind} is not a resource kind"),
        )),
    }
}

/// Text from a client made safe for logs and the audit trail: at most `max` characters,
/// control characters (terminal escapes) replaced.
pub(crate) fn printable_text(s: &str, max: usize) -> String {
    printable(s, max)
}

fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Maps a store error outside a specific object (used by admin operations).
pub fn store_error(e: StoreError) -> ApiError {
    crate::store_map::api_error("store", "", e)
}

/// Maps a store error of an operation on one object.
fn object_error(kind: ResourceKind, name: &str, e: StoreError) -> ApiError {
    crate::store_map::api_error(kind_name(kind), name, e)
}

#[cfg(test)]
mod tests;
