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

    /// Stops acknowledging anything until a restart (see `poisoned`).
    fn poison(&self, why: &str) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %why, "the store failed to persist; refusing writes until restart");
        }
        let msg = format!("store failed earlier ({why}); restart musterd");
        let _ = self.durable.send_replace(Err(msg.clone()));
        let _ = self.durable_batches.send_replace(Err(msg));
    }

    /// A flush failed for want of descriptors: nothing is poisoned and the flusher retries.
    /// A short shortage only delays the waiting writers; once it lasts `REPORT_AFTER`
    /// attempts they (and writes arriving meanwhile) get UNAVAILABLE. Their data is applied
    /// and becomes durable with the next flush that succeeds, which publishes again.
    fn flush_deferred(&self, why: &str, attempt: u32) {
        if attempt == 1 || attempt.is_multiple_of(10) {
            tracing::warn!(error = %why, attempt, "flush deferred: out of file descriptors; retrying");
        }
        if attempt >= super::flush_error::REPORT_AFTER {
            let msg = format!("cannot sync to disk right now ({why}); retry later");
            let _ = self.durable.send_replace(Err(msg.clone()));
            let _ = self.durable_batches.send_replace(Err(msg));
        }
    }

    fn request_flush(&self) {
        let mut g = lock(&self.flush_generation);
        *g += 1;
        self.flush_wanted.notify_one();
    }

    fn flush_once(&self) -> Result<(), FlushFailure> {
        // Blobs before the log, so that a log entry made durable points at a durable blob.
        // sled creates a blob file before writing it, and a writer's `apply_batch` returns
        // only once its blobs are written: a file listed before the flush may still be partial
        // (an unacknowledged write in flight), but it is complete once `db.flush()` returns,
        // because the flush waits for every log reservation made before it. So the files the
        // first pass lists are synced after the flush and only then recorded; files newer
        // than that belong to writes this flush acknowledges none of: they are synced too,
        // and again by the next flush. (Before, a file synced while partial was recorded and
        // never synced again: harmless after kill -9, not after a power loss.)
        let seen_before = self.sync_blobs(None)?;
        self.db
            .flush()
            .map_err(|e| FlushFailure::fatal(format!("flush failed: {e}")))?;
        if let Some(f) = &self.data_file {
            self.sync_blobs(Some(&seen_before))?;
            f.sync_data()
                .map_err(|e| FlushFailure::fatal(format!("fdatasync failed: {e}")))?;
        }
        Ok(())
    }

    /// Without `complete` (before the flush): returns the blob files not recorded as synced.
    /// With it (after the flush; what the first pass returned): fsyncs every file not
    /// recorded, and the directory when it gained any, then records those of `complete`,
    /// which are never synced again.
    ///
    /// Listing the directory on every flush cost ~8 % of a core under delta-report load (and
    /// grows with the number of blobs), so it is skipped while the directory's mtime still
    /// equals the one seen before the last listing that left nothing unrecorded. That is safe
    /// only if any later change must show a different mtime: the kernel stamps mtimes from a
    /// coarse clock (a jiffy behind, rounded down to the filesystem's granularity: nanoseconds
    /// on ext4, XFS, btrfs and tmpfs, 1 s on ext3), so a listing is trusted only when the
    /// directory had not changed for `BLOB_MTIME_MARGIN` before it began.
    fn sync_blobs(
        &self,
        complete: Option<&HashSet<OsString>>,
    ) -> Result<HashSet<OsString>, FlushFailure> {
        if self.data_file.is_none() {
            return Ok(HashSet::new());
        }
        let mut state = lock(&self.synced_blobs);
        // Taken before the stat: every change after the stat is at least this late. The real
        // clock, not the injected one: it is compared with file mtimes the kernel wrote.
        #[allow(clippy::disallowed_methods)]
        let checked_at = std::time::SystemTime::now();
        let mtime = match std::fs::metadata(&self.blobs_dir).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(FlushFailure::opening("reading the blob directory", &e)),
        };
        if state.quiet_since == Some(mtime) {
            // Nothing changed since a listing after which every file was recorded.
            return Ok(HashSet::new());
        }
        #[cfg(test)]
        if let Some(e) = self.inject_emfile.take() {
            return Err(FlushFailure::opening("listing blobs", &e));
        }
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(FlushFailure::opening("listing blobs", &e)),
        };
        let mut present = HashSet::new();
        let mut unrecorded = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|e| FlushFailure::opening("listing blobs", &e))?;
            let name = entry.file_name();
            if !state.synced.contains(&name) {
                // Before the flush a file may still be partial: only note it.
                // A blob removed by sled in the meantime needs no syncing; one that cannot be
                // opened for another reason (no descriptor left) must not count as synced.
                if complete.is_some() {
                    match File::open(entry.path()) {
                        Ok(f) => f.sync_data().map_err(|e| {
                            FlushFailure::fatal(format!("fdatasync of a blob failed: {e}"))
                        })?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(FlushFailure::opening("opening a blob", &e)),
                    }
                }
                unrecorded.insert(name.clone());
            }
            present.insert(name);
        }
        let Some(complete) = complete else {
            return Ok(unrecorded);
        };
        if !unrecorded.is_empty() {
            let d = File::open(&self.blobs_dir)
                .map_err(|e| FlushFailure::opening("opening the blob directory", &e))?;
            d.sync_all().map_err(|e| {
                FlushFailure::fatal(format!("fsync of the blob directory failed: {e}"))
            })?;
        }
        // Forget removed files; record the ones known complete.
        state.synced.retain(|n| present.contains(n));
        unrecorded.retain(|n| !complete.contains(n));
        state
            .synced
            .extend(present.into_iter().filter(|n| complete.contains(n)));
        let quiet = unrecorded.is_empty()
            && checked_at
                .duration_since(mtime)
                .is_ok_and(|d| d >= BLOB_MTIME_MARGIN);
        state.quiet_since = quiet.then_some(mtime);
        Ok(unrecorded)
    }

    fn run_flusher(&self) {
        let mut flushed_generation = 0u64;
        let mut transient_failures = 0u32;
        loop {
            let generation = {
                let mut g = lock(&self.flush_generation);
                while *g == flushed_generation && !self.shutdown.load(Ordering::SeqCst) {
                    g = self.flush_wanted.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                *g
            };
            let stopping = self.shutdown.load(Ordering::SeqCst);
            // Everything committed up to `target` was applied before this flush starts.
            let target = self.committed.load(Ordering::SeqCst);
            let target_batch = self.batches.load(Ordering::SeqCst);
            let started = muster::clock::Stopwatch::start();
            let result = self.flush_once();
            let took = started.elapsed();
            {
                let mut s = lock(&self.stats);
                s.flushes += 1;
                s.total += took;
                s.last = took;
            }
            match result {
                Ok(()) if !self.poisoned.load(Ordering::SeqCst) => {
                    let _ = self.durable.send_replace(Ok(target));
                    let _ = self.durable_batches.send_replace(Ok(target_batch));
                }
                Ok(()) => {}
                Err(f)
                    if f.transient
                        && !(stopping && transient_failures >= RETRIES_WHEN_STOPPING) =>
                {
                    transient_failures += 1;
                    self.flush_deferred(&f.why, transient_failures);
                    // Retry without waiting for a new request: `generation` stays unflushed.
                    std::thread::sleep(RETRY_BACKOFF);
                    continue;
                }
                Err(f) => self.poison(&f.why),
            }
            transient_failures = 0;
            flushed_generation = generation;
            if stopping && *lock(&self.flush_generation) == flushed_generation {
                return;
            }
        }
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

    /// Applies the staged batch and publishes it; answers every staged writer.
    fn apply_staged(&self, w: &mut WriterState, batch: Batch, staged: Vec<Staged>, head: [u8; 32]) {
        if staged.is_empty() {
            return;
        }
        if let Err(e) = self.snapshots.apply(&self.tree, batch) {
            // sled may have applied part of the batch; the revision cannot safely move on.
            self.poison(&e.to_string());
            for s in staged {
                s.fail(StoreError::Io(e.to_string()));
            }
            return;
        }
        {
            let mut idx = self.indexes.write().unwrap_or_else(|p| p.into_inner());
            for s in &staged {
                match &s.publish {
                    Some(Ok(o)) => {
                        if let Err(e) = idx.insert(o) {
                            tracing::error!(error = %e, "index update failed");
                        }
                    }
                    Some(Err((kind, id))) => idx.remove(*kind, id),
                    None => {}
                }
            }
        }
        if let Some(last) = staged.iter().filter_map(|s| s.revision).max() {
            w.revision = last;
            w.head = head;
            self.committed.store(last, Ordering::SeqCst);
        }
        let batch = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        for s in staged {
            match s.answer {
                Answer::Mutation(slot) => {
                    let _ = slot.send(Ok(s.revision.unwrap_or_default()));
                }
                Answer::Aux(slot) => {
                    let _ = slot.send(Ok(AuxApplied {
                        revision: s.revision,
                        batch,
                    }));
                }
                Answer::Set(slot, revisions) => {
                    let _ = slot.send(Ok(revisions));
                }
                Answer::Silent => {}
            }
        }
        self.request_flush();
    }

    /// The committer thread: applies everything queued as one group, until every sender is gone.
    fn run_committer(&self, rx: mpsc::Receiver<Queued>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(q) => group.push(q),
                    Err(_) => break,
                }
            }
            let mut w = lock(&self.writer);
            self.apply_group(&mut w, group);
        }
    }

    /// The current value of an auxiliary key, seen through the writes staged in this group.
    fn aux_current(
        &self,
        staged: &HashMap<Vec<u8>, Option<Vec<u8>>>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = staged.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(keys::aux(key))?.map(|v| v.to_vec()))
    }

    /// Applies a group of queued writes in as few batches as possible (one, unless a
    /// delete needs the referrer index to be current).
    fn apply_group(&self, w: &mut WriterState, group: Vec<Queued>) {
        if self.poisoned.load(Ordering::SeqCst) {
            for q in group {
                q.fail(StoreError::Io(
                    "the store failed earlier; restart musterd".into(),
                ));
            }
            return;
        }
        let mut batch = Batch::default();
        let mut staged: Vec<Staged> = Vec::new();
        let mut overlay = HashMap::new();
        let mut aux_overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut head = w.head;
        for q in group {
            let isolated = match &q {
                Queued::Mutation { mutation, .. } => needs_index(mutation),
                Queued::Aux { write, .. } => write.mutation.as_ref().is_some_and(needs_index),
                // A change set is applied as a batch of its own, so its failure drops only it;
                // a token write too, since it holds the refusal sequence while it is applied.
                Queued::Set { .. } | Queued::Tokens { .. } => true,
            };
            if isolated && !staged.is_empty() {
                self.apply_staged(
                    w,
                    std::mem::take(&mut batch),
                    std::mem::take(&mut staged),
                    head,
                );
                overlay.clear();
                aux_overlay.clear();
                head = w.head;
            }
            if self.poisoned.load(Ordering::SeqCst) {
                // A batch of this group failed: nothing more may be written (its revisions and
                // chain link would be reused).
                q.fail(StoreError::Io(
                    "the store failed earlier; restart musterd".into(),
                ));
                continue;
            }
            let revision = staged
                .iter()
                .filter_map(|s| s.revision)
                .max()
                .unwrap_or(w.revision)
                + 1;
            match q {
                Queued::Mutation { mutation, slot } => {
                    match self.stage(mutation, revision, &mut head, &mut overlay, &mut batch) {
                        Ok(publish) => staged.push(Staged {
                            answer: Answer::Mutation(slot),
                            revision: Some(revision),
                            publish: Some(publish),
                        }),
                        Err(e) => {
                            let _ = slot.send(Err(e));
                        }
                    }
                }
                Queued::Aux { write, slot } => {
                    match self.stage_aux(
                        write,
                        revision,
                        &mut head,
                        &mut overlay,
                        &mut aux_overlay,
                        &mut batch,
                    ) {
                        Ok((rev, publish)) => staged.push(Staged {
                            answer: Answer::Aux(slot),
                            revision: rev,
                            publish,
                        }),
                        Err(e) => {
                            let _ = slot.send(Err(e));
                        }
                    }
                }
                Queued::Tokens { write, slot } => {
                    // `staged` is empty here: a batch of its own.
                    self.apply_tokens(w, write, slot, head);
                    head = w.head;
                }
                Queued::Set { mutations, slot } => {
                    // `staged` is empty here: the set is its own batch.
                    let mut set_head = head;
                    let mut set_batch = Batch::default();
                    let mut set_overlay = HashMap::new();
                    let mut publishes = Vec::with_capacity(mutations.len());
                    let size = u32::try_from(mutations.len()).unwrap_or(u32::MAX);
                    let mut failed = None;
                    for (i, mut m) in mutations.into_iter().enumerate() {
                        if needs_index(&m) || m.put.is_none() {
                            failed = Some((
                                i,
                                StoreError::Io("a change set cannot hold deletes".into()),
                            ));
                            break;
                        }
                        m.change.change_set = revision;
                        m.change.change_set_size = size;
                        let rev = revision + i as u64;
                        match self.stage(m, rev, &mut set_head, &mut set_overlay, &mut set_batch) {
                            Ok(p) => publishes.push((rev, p)),
                            Err(e) => {
                                failed = Some((i, e));
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(f) => {
                            let _ = slot.send(Err(f));
                        }
                        None if publishes.is_empty() => {
                            let _ = slot.send(Ok(Vec::new()));
                        }
                        None => {
                            let revisions: Vec<u64> = publishes.iter().map(|p| p.0).collect();
                            let mut set_staged: Vec<Staged> = publishes
                                .into_iter()
                                .map(|(rev, p)| Staged {
                                    answer: Answer::Silent,
                                    revision: Some(rev),
                                    publish: Some(p),
                                })
                                .collect();
                            // The last entry answers for the whole set.
                            if let Some(s) = set_staged.last_mut() {
                                s.answer = Answer::Set(slot, revisions);
                            }
                            self.apply_staged(w, set_batch, set_staged, set_head);
                            head = w.head;
                        }
                    }
                }
            }
        }
        self.apply_staged(w, batch, staged, head);
    }

    /// Applies a token write and its audit entry as one batch. The refusal sequence is held
    /// from numbering the entry until the batch is applied, so entries (and the stored
    /// sequence) are written in order, as `record_refusal` writes them.
    fn apply_tokens(&self, w: &mut WriterState, write: TokenWrite, slot: AuxSlot, head: [u8; 32]) {
        let mut seq = lock(&self.refusals);
        let mut batch = Batch::default();
        let mut next = *seq;
        let staged = (|| {
            for t in &write.put {
                batch.insert(keys::token(&t.hash), record::encode_token(t)?);
            }
            for hash in &write.delete {
                batch.remove(keys::token(hash));
            }
            if let Some(mut r) = write.audit {
                next += 1;
                r.seq = next;
                stage_refusal(&mut batch, r)?;
            }
            Ok::<(), StoreError>(())
        })();
        if let Err(e) = staged {
            let _ = slot.send(Err(e));
            return;
        }
        let answer = Staged {
            answer: Answer::Aux(slot),
            revision: None,
            publish: None,
        };
        self.apply_staged(w, batch, vec![answer], head);
        if !self.poisoned.load(Ordering::SeqCst) {
            *seq = next;
        }
    }

    /// Checks an auxiliary write's guards, stages its mutation (if any), then its puts. Nothing
    /// reaches the batch unless every part is accepted.
    fn stage_aux(
        &self,
        write: AuxWrite,
        revision: u64,
        head: &mut [u8; 32],
        overlay: &mut HashMap<(KindId, String), Option<StoredObject>>,
        aux_overlay: &mut HashMap<Vec<u8>, Option<Vec<u8>>>,
        batch: &mut Batch,
    ) -> Result<(Option<u64>, Option<Publish>), StoreError> {
        for (key, expected) in &write.guards {
            if self.aux_current(aux_overlay, key)? != *expected {
                return Err(StoreError::AuxConflict);
            }
        }
        let (rev, publish) = match write.mutation {
            Some(m) => (
                Some(revision),
                Some(self.stage(m, revision, head, overlay, batch)?),
            ),
            None => (None, None),
        };
        for (key, value) in write.puts {
            match &value {
                Some(v) => batch.insert(keys::aux(&key), v.as_slice()),
                None => batch.remove(keys::aux(&key)),
            }
            aux_overlay.insert(key, value);
        }
        Ok((rev, publish))
    }
}

impl Store for SledStore {
    fn commit(&self, m: Mutation) -> Pending {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            // A send error means the committer is gone; the dropped slot reports it.
            let _ = tx.send(Queued::Mutation { mutation: m, slot });
        }
        Pending::new(answer)
    }

    fn commit_set(&self, ms: Vec<Mutation>) -> PendingSet {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Set {
                mutations: ms,
                slot,
            });
        }
        PendingSet::new(answer)
    }

    fn verify_chain(&self, from: Option<ChainAnchor>) -> Result<ChainReport, StoreError> {
        let inner = &*self.inner;
        // Only what is durable: a head hash someone anchors must survive a power loss.
        let upto = match &*inner.durable.borrow() {
            Ok(d) => *d,
            Err(e) => return Err(StoreError::Io(e.clone())),
        };
        super::verify::verify(&inner.tree, upto, from)
    }

    fn commit_aux(&self, w: AuxWrite) -> PendingAux {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Aux { write: w, slot });
        }
        PendingAux::new(answer)
    }

    fn durable_batches(&self) -> watch::Receiver<Result<u64, String>> {
        self.inner.durable_batches.subscribe()
    }

    fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::SeqCst)
    }

    fn aux_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.tree.get(keys::aux(key))?.map(|v| v.to_vec()))
    }

    fn aux_scan(&self, prefix: &[u8]) -> Result<Vec<super::AuxRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(keys::aux(prefix)) {
            let (k, v) = item?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn durable(&self) -> watch::Receiver<Result<u64, String>> {
        self.inner.durable.subscribe()
    }

    fn revision(&self) -> u64 {
        self.inner.committed.load(Ordering::SeqCst)
    }

    fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError> {
        let id = self.inner.indexes().id_of(kind, name);
        match id {
            Some(id) => self.inner.read_object(kind, &id),
            None => Ok(None),
        }
    }

    fn id_of(&self, kind: KindId, name: &str) -> Option<String> {
        self.inner.indexes().id_of(kind, name)
    }

    fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let inner = &*self.inner;
        let limit = q.limit.max(1);
        let ids = inner.indexes().select(q, limit + 1)?;
        let more = ids.len() > limit;
        let mut page = Page {
            objects: Vec::with_capacity(limit),
            more,
            last_id: ids.get(limit.min(ids.len()).saturating_sub(1)).cloned(),
        };
        for id in ids.iter().take(limit) {
            // A concurrent write may have changed or removed it since the index was read.
            if let Some(o) = inner.read_object(q.kind, id)?
                && matches(q, &o)
            {
                page.objects.push(o);
            }
        }
        Ok(page)
    }

    fn counts(&self) -> Result<BTreeMap<KindId, u64>, StoreError> {
        Ok(self.inner.indexes().counts())
    }

    fn changes(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<ChangeEntry>, StoreError> {
        let mut out = Vec::new();
        if upto <= after {
            return Ok(out);
        }
        let start = keys::event(after + 1);
        let end = keys::event(upto);
        for item in self.inner.tree.range(start..=end) {
            let (_, v) = item?;
            let mut c = record::decode_change(&v)?;
            // A delete event carries the deleted object, which lives in its last change.
            if c.after.is_none() && c.before_revision > 0 {
                c.before = self.inner.body_at(c.before_revision)?;
            }
            out.push(c);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let inner = &*self.inner;
        let upto = inner.committed.load(Ordering::SeqCst);
        super::audit_scan::audit(&inner.tree, upto, q, super::MAX_AUDIT_SCAN, |rev| {
            inner.body_at(rev)
        })
    }

    fn record_refusal(&self, mut r: Refusal) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut seq = lock(&inner.refusals);
        *seq += 1;
        r.seq = *seq;
        let mut batch = Batch::default();
        stage_refusal(&mut batch, r)?;
        inner.snapshots.apply(&inner.tree, batch)?;
        drop(seq);
        inner.request_flush();
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix([keys::TOKEN]) {
            let (k, v) = item?;
            let hash = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push(record::decode_token(hash, &v)?);
        }
        Ok(out)
    }

    fn commit_tokens(&self, w: TokenWrite) -> PendingAux {
        let (slot, answer) = oneshot::channel();
        if let Some(tx) = &self.submit {
            let _ = tx.send(Queued::Tokens { write: w, slot });
        }
        PendingAux::new(answer)
    }

    fn backup(&self, attachment: &[u8], out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        // A copy-on-write snapshot: writers go on, the copy is the state at its start.
        let mut revision = 0;
        let n = inner.snapshots.copy(&inner.tree, |items| {
            let items = items.inspect(|item| {
                if let Ok((k, _)) = item
                    && k.first() == Some(&keys::EVENT)
                {
                    revision = keys::be_u64(k).unwrap_or(revision);
                }
            });
            super::backup::write_snapshot(items, attachment, out)
        })?;
        tracing::info!(records = n, revision, "backup snapshot written");
        Ok(n)
    }

    fn flush_stats(&self) -> FlushStats {
        *lock(&self.inner.stats)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{AuxWrite, wait_durable_batch};

    /// A blob that appears after the pre-flush listing (its write may still be in flight) is
    /// synced but not recorded, so the next flush syncs it again; one the first pass saw is
    /// recorded; a durable write's blob is recorded by its own flush.
    #[tokio::test]
    async fn blobs_are_recorded_only_once_known_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), &StoreOptions::default()).unwrap();
        // Over a quarter segment: sled writes it as a blob file.
        let big = vec![7u8; 300 * 1024];
        let applied = store
            .commit_aux(AuxWrite {
                guards: Vec::new(),
                puts: vec![(b"big".to_vec(), Some(big))],
                mutation: None,
            })
            .applied()
            .await
            .unwrap();
        wait_durable_batch(&store, applied.batch).await.unwrap();
        let inner = &store.inner;
        let blobs: Vec<OsString> = std::fs::read_dir(&inner.blobs_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled wrote no blob file");
        assert!(
            blobs
                .iter()
                .all(|b| lock(&inner.synced_blobs).synced.contains(b)),
            "a durable write's blob is not recorded as synced"
        );

        let before = inner.sync_blobs(None).unwrap();
        assert!(before.is_empty());
        let late = OsString::from("999999999");
        std::fs::write(inner.blobs_dir.join(&late), b"partial").unwrap();
        let left = inner.sync_blobs(Some(&before)).unwrap();
        assert!(left.contains(&late));
        assert!(!lock(&inner.synced_blobs).synced.contains(&late));
        assert!(lock(&inner.synced_blobs).quiet_since.is_none());

        let before = inner.sync_blobs(None).unwrap();
        assert!(before.contains(&late));
        let left = inner.sync_blobs(Some(&before)).unwrap();
        assert!(left.is_empty());
        assert!(lock(&inner.synced_blobs).synced.contains(&late));
    }
}
