//! Persistence: the `Store` trait and its sled implementation.
//!
//! The store knows objects only as envelopes (kind, id, name, labels, indexed fields, revision)
//! around an opaque body; it does not know what a device is. It owns the global revision, the
//! indexes, the event log (which is also the audit trail of accepted changes), the log of refused
//! attempts, and durability: a write is reported committed at a revision, and that revision is
//! durable once `durable()` has reached it.

mod audit_scan;
mod backup;
mod flush_error;
mod index;
pub mod inspect;
mod keys;
mod record;
mod sled_store;
mod snapshot;
#[cfg(test)]
mod token_write_tests;
mod verify;

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

pub use audit_scan::MAX_AUDIT_SCAN;
pub use backup::{BackupError, BackupReader, open_backup};
pub use record::GENESIS;
pub use sled_store::{SledStore, StoreOptions};

/// Numeric kind of a stored object, the same numbers as `muster.v1.ResourceKind`.
pub type KindId = u8;

/// A stored object: the index fields the store maintains, and the encoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub kind: KindId,
    /// ULID, assigned by the caller on create and never changed.
    pub id: String,
    /// Unique per kind.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Indexed fields (e.g. a device's site, serial, kind) for field selectors.
    pub fields: BTreeMap<String, String>,
    /// Revision of the write that produced this version (set by the store).
    pub revision: u64,
    /// The resource, encoded by the layer above.
    pub body: Vec<u8>,
}

/// What a write expects to find, checked under the store's writer lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No object of this kind and name exists.
    Absent,
    /// The object exists at exactly this revision.
    Revision(u64),
}

/// A cross-object rule checked atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// An object of this kind and name must exist (a reference must resolve).
    Exists { kind: KindId, name: String },
    /// No object of `kind` may have `field == value` (nothing may still refer to a deleted one).
    NotReferenced {
        kind: KindId,
        field: String,
        value: String,
    },
}

/// Who made a change and why; stored with it in the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeMeta {
    pub principal: String,
    pub verb: String,
    pub reason: String,
    pub ticket: String,
    pub origin: String,
    /// Unix time in nanoseconds.
    pub time_unix_nanos: i64,
    /// Revision of the first change of the atomic change set this one belongs to (0: alone).
    pub change_set: u64,
    /// Number of changes in that set.
    pub change_set_size: u32,
}

/// One write: put or delete one object, with its preconditions and its audit metadata.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub kind: KindId,
    pub name: String,
    pub expect: Expect,
    /// The new version (its `revision` is ignored), or None to delete.
    pub put: Option<StoredObject>,
    pub checks: Vec<Check>,
    pub change: ChangeMeta,
}

/// An accepted change, as kept in the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    pub revision: u64,
    pub kind: KindId,
    pub name: String,
    pub id: String,
    /// Labels of the object after the change (before it, for a delete): watch filters on them.
    pub labels: BTreeMap<String, String>,
    pub meta: ChangeMeta,
    /// Revision of the replaced version, 0 on create.
    pub before_revision: u64,
    /// Body of the replaced version. Only filled where asked for (`audit`, and the object of a
    /// delete event); the log stores it once, as the `after` of `before_revision`.
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    /// The hash-chain link this record carries, if it was written with one.
    pub chain: Option<ChainLink>,
}

/// One link of the audit hash chain: SHA-256 over the previous link's hash and this record's
/// stored content, so changing, removing or inserting a record breaks every later link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

/// The outcome of recomputing the hash chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Records whose hash was recomputed.
    pub checked: u64,
    /// The first record that does not hold, and why.
    pub broken: Option<(u64, String)>,
    /// Hash of the newest record checked.
    pub head: [u8; 32],
    /// The revision checked up to.
    pub revision: u64,
    /// The anchor's revision when only what followed it was checked; 0 for a full check.
    pub from_revision: u64,
    /// Revision of the newest record checked (the anchor's when none followed it).
    pub head_revision: u64,
}

/// A chain head a previous verify found intact: where the next one may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainAnchor {
    pub revision: u64,
    pub hash: [u8; 32],
}

/// A write of auxiliary records: keys the layer above owns (e.g. a device's observed facts,
/// enrollment records), outside the event log and the global revision, so high-rate writes
/// such as agent reports do not each append a change record. Guards make it a
/// compare-and-swap; an object mutation may ride along atomically (e.g. a health change).
#[derive(Debug, Clone, Default)]
pub struct AuxWrite {
    /// Each key must currently hold exactly this value (`None`: absent), else `AuxConflict`.
    pub guards: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Values to store (`None` deletes).
    pub puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Applied in the same batch, or nothing is.
    pub mutation: Option<Mutation>,
}

/// One auxiliary record: key (without the store's prefix) and value.
pub type AuxRecord = (Vec<u8>, Vec<u8>);

/// What an applied auxiliary write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuxApplied {
    /// Revision of the ride-along mutation, if there was one.
    pub revision: Option<u64>,
    /// The batch it was applied in; durable once `durable_batches()` reaches it.
    pub batch: u64,
}

/// Why a refused attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Invalid input, conflict, missing object.
    Rejected,
    /// Unauthenticated or not permitted.
    Denied,
    /// Not a refusal: an accepted action that changes no inventory object (token management),
    /// so it has no revision and is kept in this log, listed with the refused attempts.
    Accepted,
}

/// A refused attempt, kept in the audit trail beside accepted changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub seq: u64,
    pub kind: KindId,
    pub name: String,
    pub meta: ChangeMeta,
    pub refusal: RefusalKind,
    pub message: String,
}

/// A change to the stored tokens and the audit entry recorded with it.
#[derive(Debug, Clone, Default)]
pub struct TokenWrite {
    /// Tokens added or replaced.
    pub put: Vec<StoredToken>,
    /// Hashes of tokens removed.
    pub delete: Vec<String>,
    /// Written in the same batch into the refusal log (its `seq` is assigned there); none for
    /// housekeeping such as "last used" times.
    pub audit: Option<Refusal>,
}

/// A bearer token known to the store (created at first start, or later by an admin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredToken {
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub name: String,
    pub role: String,
    /// Label selector limiting what the token may write; empty: unscoped.
    pub selector: String,
    /// Unix nanoseconds; 0 for records written before tokens had a lifecycle.
    pub created_nanos: i64,
    /// Unix nanoseconds; 0: never expires.
    pub expires_nanos: i64,
    pub created_by: String,
    /// Last successful authentication, persisted lazily (at most once a minute); 0: never.
    pub last_used_nanos: i64,
    /// The first-start admin token (revocable only once another admin token exists).
    pub bootstrap: bool,
}

/// Which objects to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub kind: KindId,
    pub labels: muster::selector::Selector,
    pub fields: muster::selector::Selector,
    /// Return only ids greater than this (pagination).
    pub after_id: Option<String>,
    pub limit: usize,
}

/// A page of objects, in id order.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub objects: Vec<StoredObject>,
    /// Whether more objects match after this page.
    pub more: bool,
    /// The id this page ended at in the index (resume after it), even when the object itself
    /// changed or vanished between the index read and the body read.
    pub last_id: Option<String>,
}

/// Filters for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub kind: Option<KindId>,
    pub name: Option<String>,
    pub principal: Option<String>,
    pub since_nanos: Option<i64>,
    pub until_nanos: Option<i64>,
    pub include_refused: bool,
    /// Resume after this accepted revision / refusal sequence.
    pub after_revision: u64,
    pub after_seq: u64,
    pub limit: usize,
}

/// One audit entry: an accepted change or a refused attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEntry {
    Accepted(ChangeEntry),
    Refused(Refusal),
}

/// One page of the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// Oldest first.
    pub entries: Vec<AuditEntry>,
    /// Where the next page resumes (after this revision, after this refusal sequence); None
    /// when both logs were read to the end. A page cut short by the scan budget may be empty
    /// and still have a next one.
    pub next: Option<(u64, u64)>,
}

impl AuditEntry {
    /// When it happened.
    pub fn time_unix_nanos(&self) -> i64 {
        match self {
            AuditEntry::Accepted(c) => c.meta.time_unix_nanos,
            AuditEntry::Refused(r) => r.meta.time_unix_nanos,
        }
    }
}

/// Errors of the persistence layer.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("an object of this kind named {0:?} already exists")]
    AlreadyExists(String),
    #[error("no object of this kind named {0:?}")]
    NotFound(String),
    #[error("revision conflict: expected {expected}, current {current}")]
    Conflict { expected: u64, current: u64 },
    /// A reference names an object of `kind` that does not exist.
    #[error("object {name:?} of kind {kind} does not exist")]
    MissingReference { kind: KindId, name: String },
    /// Objects of `kind` still refer to the one being deleted; `example` names one.
    #[error("still referenced by {count} object(s) of kind {kind}, e.g. {example:?}")]
    StillReferenced {
        count: usize,
        kind: KindId,
        example: String,
    },
    /// An auxiliary write's guard did not hold: someone else wrote that key first.
    #[error("concurrent write to the same record")]
    AuxConflict,
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the store could not persist: {0}")]
    Io(String),
    #[error("data directory is in use by another process: {0}")]
    Locked(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Statistics of the group-commit flusher, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    pub flushes: u64,
    pub total: Duration,
    pub last: Duration,
}

/// The persistence interface. Implementations must make `commit` atomic (object, indexes,
/// event and revision together or nothing) and must advance `durable()` only past revisions
/// that survive a crash.
pub trait Store: Send + Sync + 'static {
    /// Queues one mutation; it is applied atomically (with others queued at the same time) and
    /// the answer is its revision, not yet durable.
    fn commit(&self, m: Mutation) -> Pending;
    /// The durable revision, advanced by group commit; `Err` inside means persisting failed.
    fn durable(&self) -> watch::Receiver<Result<u64, String>>;
    /// Queues an auxiliary write (see `AuxWrite`); applied with the next group.
    fn commit_aux(&self, w: AuxWrite) -> PendingAux;
    /// The newest batch number covered by a completed flush; `Err` means persisting failed.
    fn durable_batches(&self) -> watch::Receiver<Result<u64, String>>;
    /// The newest applied batch number.
    fn batches(&self) -> u64;
    /// One auxiliary record.
    fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Auxiliary records whose key starts with `prefix`, in key order.
    fn aux_scan(&self, prefix: &[u8]) -> Result<Vec<AuxRecord>, StoreError>;
    /// The newest committed revision.
    fn revision(&self) -> u64;
    /// One object by kind and name.
    fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError>;
    /// The id of an object by kind and name, from the in-memory index (no disk read).
    fn id_of(&self, kind: KindId, name: &str) -> Option<String>;
    /// Objects matching a query, in id order.
    fn list(&self, q: &ListQuery) -> Result<Page, StoreError>;
    /// Number of objects per kind.
    fn counts(&self) -> Result<BTreeMap<KindId, u64>, StoreError>;
    /// Accepted changes with revision in (after, upto], oldest first, at most `limit`.
    fn changes(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<ChangeEntry>, StoreError>;
    /// Audit entries matching a query, oldest first, reading a bounded part of the logs.
    fn audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError>;
    /// Queues several mutations as one atomic change set: all are applied, with consecutive
    /// revisions and the set recorded in each change, or none is. The answer is every
    /// revision, or the index of the mutation that failed and why.
    fn commit_set(&self, ms: Vec<Mutation>) -> PendingSet;
    /// `commit_set`, with auxiliary records put (`None`: deleted) in the set's batch: the
    /// set's changes and the records are applied together or not at all (records without any
    /// mutation are refused: that is `commit_aux`).
    fn commit_set_with(
        &self,
        ms: Vec<Mutation>,
        aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> PendingSet;
    /// Recomputes the audit hash chain over every durable accepted change, or (with an
    /// anchor) re-hashes the anchor's record and checks only the changes after it.
    fn verify_chain(&self, from: Option<ChainAnchor>) -> Result<ChainReport, StoreError>;
    /// Records a refused attempt; persisted with the next group flush, not waited for.
    fn record_refusal(&self, r: Refusal) -> Result<(), StoreError>;
    /// Tokens kept in the store.
    fn tokens(&self) -> Result<Vec<StoredToken>, StoreError>;
    /// Adds, replaces or removes tokens together with the audit entry that records it, as one
    /// batch through the committer (durable with the group flush that covers its batch; see
    /// `commit_tokens_durably`): a crash never leaves a token without its audit entry or an
    /// entry for a token that was not written.
    fn commit_tokens(&self, w: TokenWrite) -> PendingAux;
    /// Writes a consistent snapshot of the whole store, carrying `attachment` (opaque bytes of
    /// the layer above, e.g. the encrypted keys bundle; empty for none).
    fn backup(&self, attachment: &[u8], out: &mut dyn std::io::Write) -> Result<u64, StoreError>;
    /// Flush statistics.
    fn flush_stats(&self) -> FlushStats;
}

/// The answer to a queued mutation.
#[derive(Debug)]
pub struct Pending(tokio::sync::oneshot::Receiver<Result<u64, StoreError>>);

impl Pending {
    /// Wraps the receiving end of a mutation's answer.
    pub fn new(rx: tokio::sync::oneshot::Receiver<Result<u64, StoreError>>) -> Self {
        Self(rx)
    }

    /// The revision the mutation was applied at, or why it was not.
    pub async fn revision(self) -> Result<u64, StoreError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StoreError::Io("the store stopped".into())))
    }
}

/// Why a change set was refused: which mutation failed (index into the set), and how.
pub type SetFailure = (usize, StoreError);

/// The answer to a queued change set.
#[derive(Debug)]
pub struct PendingSet(tokio::sync::oneshot::Receiver<Result<Vec<u64>, SetFailure>>);

impl PendingSet {
    /// Wraps the receiving end of a change set's answer.
    pub fn new(rx: tokio::sync::oneshot::Receiver<Result<Vec<u64>, SetFailure>>) -> Self {
        Self(rx)
    }

    /// The revisions the mutations were applied at, in order, or why none was applied.
    pub async fn revisions(self) -> Result<Vec<u64>, SetFailure> {
        self.0
            .await
            .unwrap_or_else(|_| Err((0, StoreError::Io("the store stopped".into()))))
    }
}

/// The answer to a queued auxiliary write.
#[derive(Debug)]
pub struct PendingAux(tokio::sync::oneshot::Receiver<Result<AuxApplied, StoreError>>);

impl PendingAux {
    /// Wraps the receiving end of an auxiliary write's answer.
    pub fn new(rx: tokio::sync::oneshot::Receiver<Result<AuxApplied, StoreError>>) -> Self {
        Self(rx)
    }

    /// Where the write was applied, or why it was not.
    pub async fn applied(self) -> Result<AuxApplied, StoreError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StoreError::Io("the store stopped".into())))
    }
}

/// Waits until batch `batch` is durable, or reports why it cannot become so.
pub async fn wait_durable_batch(store: &dyn Store, batch: u64) -> Result<(), StoreError> {
    let mut rx = store.durable_batches();
    let r = rx.wait_for(|d| !matches!(d, Ok(d) if *d < batch)).await;
    match r {
        Ok(v) => match &*v {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Io(e.clone())),
        },
        Err(_) => Err(StoreError::Io("store closed".into())),
    }
}

/// Queues an auxiliary write and waits until it is applied and durable (what may be
/// acknowledged).
pub async fn commit_aux_durably(store: &dyn Store, w: AuxWrite) -> Result<AuxApplied, StoreError> {
    let applied = store.commit_aux(w).applied().await?;
    wait_durable_batch(store, applied.batch).await?;
    Ok(applied)
}

/// Queues a token write and waits until it is applied and durable.
pub async fn commit_tokens_durably(store: &dyn Store, w: TokenWrite) -> Result<(), StoreError> {
    let applied = store.commit_tokens(w).applied().await?;
    wait_durable_batch(store, applied.batch).await
}

/// The newest durable revision, or why nothing more can become durable.
pub fn durable_revision(store: &dyn Store) -> Result<u64, StoreError> {
    store.durable().borrow().clone().map_err(StoreError::Io)
}

/// Waits until `revision` is durable, or reports why it cannot become so.
pub async fn wait_durable(store: &dyn Store, revision: u64) -> Result<(), StoreError> {
    let mut rx = store.durable();
    let r = rx.wait_for(|d| !matches!(d, Ok(d) if *d < revision)).await;
    match r {
        Ok(v) => match &*v {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Io(e.clone())),
        },
        Err(_) => Err(StoreError::Io("store closed".into())),
    }
}
