//! The sled implementation of `Store`: group apply, group commit, in-memory indexes.
//!
//! Writes: writers send their mutation to one committer thread and await their own answer; the
//! committer takes *everything* queued and applies it as one `apply_batch`, assigning
//! consecutive revisions, then publishes it to the in-memory indexes. Writers never contend for
//! a lock and never occupy a thread while they wait. sled charges ~40 us per batch plus
//! ~20 us per 4 KB value and ~7 us per small key, so one batch per group and three keys per
//! write (envelope, change record holding the body, history) is what makes thousands of
//! writes per second.
//!
//! Durability is a separate step: a single flusher thread runs `db.flush()` and then
//! `fdatasync` on sled's data file (sled's own flush uses `sync_file_range`, which leaves the
//! device write cache dirty), and publishes the highest revision that flush covered. Writers
//! wait for a flush that *started after* their batch, so many writes share one flush. sled's
//! `flush_async` is never used: with several concurrent callers it deadlocks in 0.34.7.
//!
//! Reads: the name, label and field indexes and every object's envelope are in memory
//! (rebuilt from the `o` records at open); a body is read from the change record at the
//! object's revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use sled::{IVec, Tree};
use tokio::sync::{oneshot, watch};

use super::flush_error::{FlushFailure, RETRIES_WHEN_STOPPING, RETRY_BACKOFF};
use super::index::Index;
use super::keys;
use super::record;
use super::snapshot::{Batch, Snapshots};
use super::{
    AuditPage, AuditQuery, AuxApplied, AuxWrite, ChainAnchor, ChainReport, ChangeEntry, Check,
    Expect, FlushStats, KindId, ListQuery, Mutation, Page, Pending, PendingAux, PendingSet,
    Refusal, SetFailure, Store, StoreError, StoredObject, StoredToken, TokenWrite,
};

/// How many refused attempts the audit trail keeps (oldest dropped first), so that a flood of
/// bad requests cannot fill the disk.
pub const MAX_REFUSALS: u64 = 100_000;

mod commit;
mod flush;
mod trait_impl;

/// Tuning of the sled store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache size. sled's 1 GiB default keeps ~415 MiB resident after a scan of
    /// 100k 4 KB records, so the default here is smaller.
    pub cache_capacity_bytes: u64,
    /// `fdatasync` the data file after each group flush (power-loss safety).
    pub fdatasync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 * 1024 * 1024,
            fdatasync: true,
        }
    }
}

/// Where a queued writer finds its result.
type Slot = oneshot::Sender<Result<u64, StoreError>>;
/// Where a queued auxiliary writer finds its result.
type AuxSlot = oneshot::Sender<Result<AuxApplied, StoreError>>;
/// Where a queued change set finds its result.
type SetSlot = oneshot::Sender<Result<Vec<u64>, SetFailure>>;

/// Largest group the committer applies as one batch.
const MAX_GROUP: usize = 1024;

enum Queued {
    Mutation {
        mutation: Mutation,
        slot: Slot,
    },
    Aux {
        write: AuxWrite,
        slot: AuxSlot,
    },
    Set {
        mutations: Vec<Mutation>,
        /// Auxiliary records put (or deleted) in the set's batch.
        aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        slot: SetSlot,
    },
    Tokens {
        write: TokenWrite,
        slot: AuxSlot,
    },
}

/// Whom to answer once a staged write is applied.
enum Answer {
    Mutation(Slot),
    Aux(AuxSlot),
    /// A change set, answered with all its revisions.
    Set(SetSlot, Vec<u64>),
    /// Part of a change set that another entry answers for.
    Silent,
}

/// An index change to publish once the batch is applied.
type Publish = Result<StoredObject, (KindId, String)>;

/// A staged write: what the batch holds for it, and what to publish once it is applied.
struct Staged {
    answer: Answer,
    /// The revision its mutation was given, if it had one.
    revision: Option<u64>,
    publish: Option<Publish>,
}

impl Staged {
    fn fail(self, e: StoreError) {
        match self.answer {
            Answer::Mutation(s) => {
                let _ = s.send(Err(e));
            }
            Answer::Aux(s) => {
                let _ = s.send(Err(e));
            }
            Answer::Set(s, _) => {
                let _ = s.send(Err((0, e)));
            }
            Answer::Silent => {}
        }
    }
}

impl Queued {
    fn fail(self, e: StoreError) {
        match self {
            Queued::Mutation { slot, .. } => {
                let _ = slot.send(Err(e));
            }
            Queued::Aux { slot, .. } => {
                let _ = slot.send(Err(e));
            }
            Queued::Set { slot, .. } => {
                let _ = slot.send(Err((0, e)));
            }
            Queued::Tokens { slot, .. } => {
                let _ = slot.send(Err(e));
            }
        }
    }
}

/// State only the writer (holding the lock) may change.
struct WriterState {
    revision: u64,
    /// Hash of the newest change record: the `prev` of the next one.
    head: [u8; 32],
}

struct Inner {
    db: sled::Db,
    tree: Tree,
    /// Held by the committer while it applies a group.
    writer: Mutex<WriterState>,
    /// Every write to the tree goes through it, so a running backup copies a snapshot.
    snapshots: Snapshots,
    indexes: RwLock<Index>,
    /// Serialises refusal records (they have their own sequence).
    refusals: Mutex<u64>,
    /// Newest revision applied to sled (maybe not yet durable).
    committed: AtomicU64,
    /// Number of batches applied so far (auxiliary writes have no revision, only a batch).
    batches: AtomicU64,
    durable_batches: watch::Sender<Result<u64, String>>,
    /// Bumped by every write that needs flushing; the flusher runs until it catches up.
    flush_generation: Mutex<u64>,
    flush_wanted: Condvar,
    durable: watch::Sender<Result<u64, String>>,
    stats: Mutex<FlushStats>,
    data_file: Option<File>,
    /// sled's directory of out-of-line values (log messages over a quarter segment), which
    /// sled writes without fsync; and what the flusher knows of its files.
    blobs_dir: PathBuf,
    synced_blobs: Mutex<BlobSync>,
    shutdown: AtomicBool,
    /// Set when a flush or a batch failed: sled may hold a partial batch, and pages the kernel
    /// failed to write may be gone, so nothing is acknowledged again until a restart.
    poisoned: AtomicBool,
    #[cfg(test)]
    inject_emfile: super::flush_error::InjectEmfile,
}

/// The sled-backed store. Dropping it flushes and stops the flusher thread.
pub struct SledStore {
    inner: Arc<Inner>,
    /// Queue to the committer; dropped first on shutdown so the committer drains and stops.
    submit: Option<mpsc::Sender<Queued>>,
    committer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

/// How long the blob directory must have been unchanged before a listing of it is trusted
/// to stay current while its mtime stays the same (see `Inner::sync_blobs`): more than any
/// Linux filesystem's timestamp granularity plus a clock tick. (5 s cost the first seconds
/// of every delta-report burst after a full-report one: a listing per flush.)
const BLOB_MTIME_MARGIN: Duration = Duration::from_secs(2);

/// What the flusher knows about sled's blob files.
#[derive(Debug, Default)]
struct BlobSync {
    /// Blob files fsynced once they were complete: never synced again.
    synced: HashSet<OsString>,
    /// The directory's mtime at the last listing, when that listing can be trusted until the
    /// mtime changes.
    quiet_since: Option<std::time::SystemTime>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind (counters, queues), still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn be(v: &IVec) -> Result<u64, StoreError> {
    keys::be_u64(v).ok_or_else(|| StoreError::Corrupt("counter is not 8 bytes".into()))
}

impl SledStore {
    /// Test hook: the next `n` blob-directory listings fail with EMFILE.
    #[cfg(test)]
    pub(super) fn inject_emfile(&self, n: u32) {
        self.inner.inject_emfile.set(n);
    }

    /// Opens (or creates) the store in `dir`, rebuilding the in-memory indexes.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Io(format!("cannot open store in {}: {other}", dir.display())),
            })?;
        let tree: Tree = (*db).clone();
        match tree.get(keys::META_FORMAT)? {
            // Layout 1 lacks only the hash chain, layout 2 only the observed layer's key move
            // (which that layer makes at start-up): upgrade in place, so that an older musterd
            // refuses the store instead of misreading it.
            Some(v) if matches!(be(&v)?, 1 | 2) => {
                tree.insert(keys::META_FORMAT, &keys::FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) if be(&v)? != keys::FORMAT_VERSION => {
                return Err(StoreError::Corrupt(format!(
                    "store layout version {} is not supported by this musterd (expects {})",
                    be(&v)?,
                    keys::FORMAT_VERSION
                )));
            }
            Some(_) => {}
            None => {
                tree.insert(keys::META_FORMAT, &keys::FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        let (revision, head) = match tree.scan_prefix([keys::EVENT]).next_back() {
            Some(item) => {
                let (k, v) = item?;
                let head = record::decode_change(&v)?
                    .chain
                    .map_or(record::GENESIS, |l| l.hash);
                (be(&k)?, head)
            }
            None => (0, record::GENESIS),
        };
        let refusal_seq = tree
            .get(keys::META_REFUSAL_SEQ)?
            .map(|v| be(&v))
            .transpose()?
            .unwrap_or(0);
        let mut indexes = Index::default();
        for item in tree.scan_prefix([keys::OBJECT]) {
            let (k, v) = item?;
            let kind = *k
                .get(1)
                .ok_or_else(|| StoreError::Corrupt("short envelope key".into()))?;
            indexes.insert(&record::decode_envelope(kind, &v)?)?;
        }
        let data_file = if opts.fdatasync {
            let p = dir.join("db");
            Some(File::open(&p).map_err(|e| {
                StoreError::Io(format!("cannot open sled data file {}: {e}", p.display()))
            })?)
        } else {
            None
        };
        let (durable, _) = watch::channel(Ok(revision));
        let (durable_batches, _) = watch::channel(Ok(0));
        let inner = Arc::new(Inner {
            db,
            tree,
            writer: Mutex::new(WriterState { revision, head }),
            snapshots: Snapshots::default(),
            indexes: RwLock::new(indexes),
            refusals: Mutex::new(refusal_seq),
            committed: AtomicU64::new(revision),
            batches: AtomicU64::new(0),
            durable_batches,
            flush_generation: Mutex::new(0),
            flush_wanted: Condvar::new(),
            durable,
            stats: Mutex::new(FlushStats::default()),
            data_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(BlobSync::default()),
            shutdown: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            #[cfg(test)]
            inject_emfile: Default::default(),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Io(format!("cannot start {name} thread: {e}")))
        };
        let flusher_inner = Arc::clone(&inner);
        let flusher = spawn(
            "muster-flusher",
            Box::new(move || flusher_inner.run_flusher()),
        )?;
        let (submit, queue) = mpsc::channel();
        let committer_inner = Arc::clone(&inner);
        let committer = spawn(
            "muster-committer",
            Box::new(move || committer_inner.run_committer(queue)),
        )?;
        Ok(Self {
            inner,
            submit: Some(submit),
            committer: Some(committer),
            flusher: Some(flusher),
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Stop taking writes, let the committer finish what is queued, then flush it all.
        self.submit.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.request_flush();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

/// A mutation whose checks read the referrer index, which must be current (nothing staged).
/// Puts refusal record `r` (numbered already) into `batch`, with the stored sequence, and
/// drops the oldest beyond `MAX_REFUSALS`.
fn stage_refusal(batch: &mut Batch, r: Refusal) -> Result<(), StoreError> {
    let seq = r.seq;
    batch.insert(&keys::refusal(seq)[..], record::encode_refusal(&r)?);
    batch.insert(keys::META_REFUSAL_SEQ, &seq.to_be_bytes());
    if seq > MAX_REFUSALS {
        batch.remove(&keys::refusal(seq - MAX_REFUSALS)[..]);
    }
    Ok(())
}

fn needs_index(m: &Mutation) -> bool {
    m.checks
        .iter()
        .any(|c| matches!(c, Check::NotReferenced { .. }))
}

fn matches(q: &ListQuery, o: &StoredObject) -> bool {
    q.labels.matches(|k| o.labels.get(k).map(String::as_str))
        && q.fields.matches(|k| {
            if k == "name" {
                Some(o.name.as_str())
            } else {
                o.fields.get(k).map(String::as_str)
            }
        })
}

impl Inner {
    fn indexes(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.indexes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The body written at `revision` (the `after` of that change record).
    fn body_at(&self, revision: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree.get(keys::event(revision))? {
            Some(v) => Ok(record::decode_change(&v)?.after),
            None => Ok(None),
        }
    }

    fn read_envelope(&self, kind: KindId, id: &str) -> Result<Option<StoredObject>, StoreError> {
        match self.tree.get(keys::object(kind, id))? {
            Some(v) => Ok(Some(record::decode_envelope(kind, &v)?)),
            None => Ok(None),
        }
    }

    /// An object with its body.
    fn read_object(&self, kind: KindId, id: &str) -> Result<Option<StoredObject>, StoreError> {
        let Some(mut o) = self.read_envelope(kind, id)? else {
            return Ok(None);
        };
        o.body = self.body_at(o.revision)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "no body at revision {} for object {id}",
                o.revision
            ))
        })?;
        Ok(Some(o))
    }

    /// The current envelope of an object, seen through the writes staged in this group.
    fn current(
        &self,
        staged: &HashMap<(KindId, String), Option<StoredObject>>,
        kind: KindId,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        if let Some(v) = staged.get(&(kind, name.to_string())) {
            return Ok(v.clone());
        }
        let id = self.indexes().id_of(kind, name);
        match id {
            Some(id) => self.read_envelope(kind, &id),
            None => Ok(None),
        }
    }

    fn check(
        &self,
        staged: &HashMap<(KindId, String), Option<StoredObject>>,
        c: &Check,
    ) -> Result<(), StoreError> {
        match c {
            Check::Exists { kind, name } => {
                let exists = match staged.get(&(*kind, name.clone())) {
                    Some(v) => v.is_some(),
                    None => self.indexes().exists(*kind, name),
                };
                if !exists {
                    return Err(StoreError::MissingReference {
                        kind: *kind,
                        name: name.clone(),
                    });
                }
            }
            Check::NotReferenced { kind, field, value } => {
                // Only evaluated with nothing staged (see `apply_group`), so the index is current.
                let idx = self.indexes();
                let (count, example) = idx.referrers(*kind, field, value);
                if count > 0 {
                    let example = example.unwrap_or_default().to_string();
                    return Err(StoreError::StillReferenced {
                        count,
                        kind: *kind,
                        example,
                    });
                }
            }
        }
        Ok(())
    }

    /// Validates one mutation against the current state and adds its keys to `batch`.
    fn stage(
        &self,
        m: Mutation,
        revision: u64,
        head: &mut [u8; 32],
        staged: &mut HashMap<(KindId, String), Option<StoredObject>>,
        batch: &mut Batch,
    ) -> Result<Publish, StoreError> {
        let existing = self.current(staged, m.kind, &m.name)?;
        match (m.expect, &existing) {
            (Expect::Absent, Some(_)) => return Err(StoreError::AlreadyExists(m.name)),
            (Expect::Revision(_), None) => return Err(StoreError::NotFound(m.name)),
            (Expect::Revision(r), Some(o)) if o.revision != r => {
                return Err(StoreError::Conflict {
                    expected: r,
                    current: o.revision,
                });
            }
            _ => {}
        }
        if m.put.is_none() && existing.is_none() {
            return Err(StoreError::NotFound(m.name));
        }
        for c in &m.checks {
            self.check(staged, c)?;
        }
        let mut body = None;
        let new = m.put.map(|mut new| {
            new.kind = m.kind;
            new.revision = revision;
            if let Some(old) = &existing {
                new.id = old.id.clone();
                new.name = old.name.clone();
            }
            body = Some(std::mem::take(&mut new.body));
            new
        });
        let id = new
            .as_ref()
            .or(existing.as_ref())
            .map(|o| o.id.clone())
            .unwrap_or_default();
        match &new {
            Some(o) => batch.insert(keys::object(m.kind, &id), record::encode_envelope(o)?),
            None => batch.remove(keys::object(m.kind, &id)),
        }
        let change = ChangeEntry {
            revision,
            kind: m.kind,
            name: m.name.clone(),
            id: id.clone(),
            labels: new
                .as_ref()
                .or(existing.as_ref())
                .map(|o| o.labels.clone())
                .unwrap_or_default(),
            meta: m.change,
            before_revision: existing.as_ref().map_or(0, |o| o.revision),
            before: None,
            after: body,
            chain: None,
        };
        let (bytes, hash) = record::encode_change(&change, head)?;
        batch.insert(keys::history(m.kind, &m.name, revision), &[][..]);
        batch.insert(&keys::event(revision)[..], bytes);
        *head = hash;
        staged.insert((m.kind, m.name.clone()), new.clone());
        Ok(match new {
            Some(o) => Ok(o),
            None => Err((m.kind, id)),
        })
    }
}

#[cfg(test)]
mod tests;
