//! The sled implementation of `Store`, with group commit.
//!
//! Writes are serialised by one writer lock (the global revision makes them a sequence anyway)
//! and applied as one `apply_batch`, which sled makes atomic across crashes. Durability is a
//! separate step: a single flusher thread runs `db.flush()` and then `fdatasync` on sled's data
//! file (sled's own flush uses `sync_file_range`, which leaves the device write cache dirty),
//! and publishes the highest revision that the flush covered. Writers wait for a flush that
//! *started after* their batch, so many concurrent writes share one flush. sled's
//! `flush_async` is never used: with several concurrent callers it deadlocks in 0.34.7.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::{Batch, IVec, Tree};
use tokio::sync::watch;

use super::keys::{self, FIELD, LABEL};
use super::record;
use super::{
    AuditEntry, AuditQuery, ChangeEntry, Check, Expect, FlushStats, KindId, ListQuery, Mutation,
    Page, Refusal, Store, StoreError, StoredObject, StoredToken,
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
            cache_capacity_bytes: 128 * 1024 * 1024,
            fdatasync: true,
        }
    }
}

/// State only the writer (holding the lock) may change.
struct WriterState {
    revision: u64,
    counts: BTreeMap<KindId, u64>,
}

struct Inner {
    db: sled::Db,
    tree: Tree,
    writer: Mutex<WriterState>,
    /// Serialises refusal records (they have their own sequence).
    refusals: Mutex<u64>,
    /// Newest revision applied to sled (maybe not yet durable).
    committed: AtomicU64,
    /// Bumped by every write that needs flushing; the flusher runs until it catches up.
    flush_generation: Mutex<u64>,
    flush_wanted: Condvar,
    durable: watch::Sender<Result<u64, String>>,
    stats: Mutex<FlushStats>,
    data_file: Option<File>,
    shutdown: AtomicBool,
}

/// The sled-backed store. Dropping it flushes and stops the flusher thread.
pub struct SledStore {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind (counters), still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn be(v: &IVec) -> Result<u64, StoreError> {
    keys::be_u64(v).ok_or_else(|| StoreError::Corrupt("counter is not 8 bytes".into()))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_capacity_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(dir.display().to_string())
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Io(format!("cannot open store in {}: {other}", dir.display())),
            })?;
        let tree: Tree = (*db).clone();
        match tree.get(keys::META_FORMAT)? {
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
        let revision = tree
            .get(keys::META_REVISION)?
            .map(|v| be(&v))
            .transpose()?
            .unwrap_or(0);
        let refusal_seq = tree
            .get(keys::META_REFUSAL_SEQ)?
            .map(|v| be(&v))
            .transpose()?
            .unwrap_or(0);
        let mut counts = BTreeMap::new();
        for item in tree.scan_prefix(b"mcount") {
            let (k, v) = item?;
            if let Some(kind) = k.last() {
                counts.insert(*kind, be(&v)?);
            }
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
        let inner = Arc::new(Inner {
            db,
            tree,
            writer: Mutex::new(WriterState { revision, counts }),
            refusals: Mutex::new(refusal_seq),
            committed: AtomicU64::new(revision),
            flush_generation: Mutex::new(0),
            flush_wanted: Condvar::new(),
            durable,
            stats: Mutex::new(FlushStats::default()),
            data_file,
            shutdown: AtomicBool::new(false),
        });
        let flusher_inner = Arc::clone(&inner);
        let flusher = std::thread::Builder::new()
            .name("muster-flusher".into())
            .spawn(move || flusher_inner.run_flusher())
            .map_err(|e| StoreError::Io(format!("cannot start flusher thread: {e}")))?;
        Ok(Self {
            inner,
            flusher: Mutex::new(Some(flusher)),
            path: dir.to_path_buf(),
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.request_flush();
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
    }
}

impl Inner {
    fn request_flush(&self) {
        let mut g = lock(&self.flush_generation);
        *g += 1;
        self.flush_wanted.notify_one();
    }

    fn flush_once(&self) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flush failed: {e}"))?;
        if let Some(f) = &self.data_file {
            f.sync_data()
                .map_err(|e| format!("fdatasync failed: {e}"))?;
        }
        Ok(())
    }

    fn run_flusher(&self) {
        let mut flushed_generation = 0u64;
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
            let started = Instant::now();
            let result = self.flush_once();
            let took = started.elapsed();
            {
                let mut s = lock(&self.stats);
                s.flushes += 1;
                s.total += took;
                s.last = took;
            }
            match result {
                Ok(()) => {
                    let _ = self.durable.send_replace(Ok(target));
                }
                Err(e) => {
                    tracing::error!(error = %e, "store flush failed; writes are not acknowledged");
                    let _ = self.durable.send_replace(Err(e));
                    // Do not spin on a failing disk.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            flushed_generation = generation;
            if stopping && *lock(&self.flush_generation) == flushed_generation {
                return;
            }
        }
    }

    fn get_object_by_id(
        &self,
        kind: KindId,
        id: &[u8],
    ) -> Result<Option<StoredObject>, StoreError> {
        let mut k = vec![keys::OBJECT, kind];
        k.extend_from_slice(id);
        match self.tree.get(k)? {
            Some(v) => Ok(Some(record::decode_object(kind, &v)?)),
            None => Ok(None),
        }
    }

    fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError> {
        match self.tree.get(keys::name(kind, name))? {
            Some(id) => self.get_object_by_id(kind, &id),
            None => Ok(None),
        }
    }

    fn check(&self, c: &Check) -> Result<(), StoreError> {
        match c {
            Check::Exists { kind, name } => {
                if self.tree.get(keys::name(*kind, name))?.is_none() {
                    return Err(StoreError::MissingReference {
                        kind_name: kind_label(*kind).to_string(),
                        name: name.clone(),
                    });
                }
            }
            Check::NotReferenced { kind, field, value } => {
                let prefix = keys::index_value_prefix(FIELD, *kind, field, value);
                let mut it = self.tree.scan_prefix(&prefix);
                if let Some(first) = it.next() {
                    let (k, _) = first?;
                    let id = &k[prefix.len()..];
                    let example = self
                        .get_object_by_id(*kind, id)?
                        .map(|o| format!("{} {}", kind_label(*kind), o.name))
                        .unwrap_or_default();
                    let count = 1 + it.count();
                    return Err(StoreError::StillReferenced { count, example });
                }
            }
        }
        Ok(())
    }

    /// Ids from one index (label or field) for `key in values`, greater than `after`, sorted.
    fn index_ids(
        &self,
        tag: u8,
        kind: KindId,
        key: &str,
        values: &BTreeSet<String>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut ids = Vec::new();
        for value in values {
            let prefix = keys::index_value_prefix(tag, kind, key, value);
            let start = match after {
                Some(a) => {
                    let mut s = prefix.clone();
                    s.extend_from_slice(a.as_bytes());
                    Bound::Excluded(s)
                }
                None => Bound::Included(prefix.clone()),
            };
            let mut taken = 0;
            for item in self.tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
                let (k, _) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                ids.push(k[prefix.len()..].to_vec());
                taken += 1;
                // With one value the index is already in id order: stop early.
                if values.len() == 1 && taken >= limit {
                    break;
                }
            }
        }
        if values.len() > 1 {
            ids.sort();
            ids.dedup();
        }
        Ok(ids)
    }
}

/// Kind names for messages; the store only knows numbers, so keep these in step with the proto.
fn kind_label(kind: KindId) -> &'static str {
    match kind {
        1 => "site",
        2 => "rack",
        3 => "device",
        4 => "profile",
        5 => "window",
        6 => "credential",
        7 => "campaign",
        _ => "object",
    }
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

fn index_diff(
    batch: &mut Batch,
    tag: u8,
    kind: KindId,
    id: &str,
    old: Option<&BTreeMap<String, String>>,
    new: Option<&BTreeMap<String, String>>,
) {
    let empty = BTreeMap::new();
    let old = old.unwrap_or(&empty);
    let new = new.unwrap_or(&empty);
    for (k, v) in old {
        if new.get(k) != Some(v) {
            batch.remove(keys::index_entry(tag, kind, k, v, id));
        }
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            batch.insert(keys::index_entry(tag, kind, k, v, id), &[][..]);
        }
    }
}

impl Store for SledStore {
    fn commit(&self, m: Mutation) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let mut w = lock(&inner.writer);
        let existing = inner.get(m.kind, &m.name)?;
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
            inner.check(c)?;
        }
        let revision = w.revision + 1;
        let mut batch = Batch::default();
        let mut count = w.counts.get(&m.kind).copied().unwrap_or(0);
        let new = match m.put {
            Some(mut new) => {
                new.kind = m.kind;
                new.revision = revision;
                if let Some(old) = &existing {
                    new.id = old.id.clone();
                    new.name = old.name.clone();
                } else {
                    batch.insert(keys::name(m.kind, &new.name), new.id.as_bytes());
                    count += 1;
                }
                batch.insert(keys::object(m.kind, &new.id), record::encode_object(&new)?);
                Some(new)
            }
            None => None,
        };
        let id = new
            .as_ref()
            .or(existing.as_ref())
            .map(|o| o.id.clone())
            .unwrap_or_default();
        index_diff(
            &mut batch,
            LABEL,
            m.kind,
            &id,
            existing.as_ref().map(|o| &o.labels),
            new.as_ref().map(|o| &o.labels),
        );
        index_diff(
            &mut batch,
            FIELD,
            m.kind,
            &id,
            existing.as_ref().map(|o| &o.fields),
            new.as_ref().map(|o| &o.fields),
        );
        if new.is_none() {
            batch.remove(keys::object(m.kind, &id));
            batch.remove(keys::name(m.kind, &m.name));
            count = count.saturating_sub(1);
        }
        let change = ChangeEntry {
            revision,
            kind: m.kind,
            name: m.name.clone(),
            id,
            labels: new
                .as_ref()
                .or(existing.as_ref())
                .map(|o| o.labels.clone())
                .unwrap_or_default(),
            meta: m.change,
            before_revision: existing.as_ref().map_or(0, |o| o.revision),
            before: m
                .audit_before
                .or_else(|| existing.as_ref().map(|o| o.body.clone())),
            after: m
                .audit_after
                .or_else(|| new.as_ref().map(|o| o.body.clone())),
        };
        batch.insert(keys::history(m.kind, &m.name, revision), &[][..]);
        batch.insert(&keys::event(revision)[..], record::encode_change(&change)?);
        batch.insert(keys::META_REVISION, &revision.to_be_bytes());
        batch.insert(keys::meta_count(m.kind), &count.to_be_bytes());
        inner.tree.apply_batch(batch)?;
        w.revision = revision;
        w.counts.insert(m.kind, count);
        inner.committed.store(revision, Ordering::SeqCst);
        drop(w);
        inner.request_flush();
        Ok(revision)
    }

    fn durable(&self) -> watch::Receiver<Result<u64, String>> {
        self.inner.durable.subscribe()
    }

    fn revision(&self) -> u64 {
        self.inner.committed.load(Ordering::SeqCst)
    }

    fn get(&self, kind: KindId, name: &str) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get(kind, name)
    }

    fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let inner = &*self.inner;
        let limit = q.limit.max(1);
        let mut page = Page::default();
        let accept = |o: StoredObject, page: &mut Page| -> bool {
            if !matches(q, &o) {
                return true;
            }
            if page.objects.len() == limit {
                page.more = true;
                return false;
            }
            page.objects.push(o);
            true
        };
        let after = q.after_id.as_deref();
        // A `name=` field requirement is a direct lookup.
        if let Some((_, names)) = q.fields.indexable().find(|(k, _)| *k == "name") {
            for name in names {
                if let Some(o) = inner.get(q.kind, name)?
                    && after.is_none_or(|a| o.id.as_str() > a)
                    && !accept(o, &mut page)
                {
                    break;
                }
            }
            page.objects.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(page);
        }
        let index = q
            .fields
            .indexable()
            .next()
            .map(|(k, v)| (FIELD, k, v))
            .or_else(|| q.labels.indexable().next().map(|(k, v)| (LABEL, k, v)));
        if let Some((tag, key, values)) = index {
            // Read a little more than a page per round, so sparse matches still finish.
            for id in inner.index_ids(tag, q.kind, key, values, after, usize::MAX)? {
                if let Some(o) = inner.get_object_by_id(q.kind, &id)?
                    && !accept(o, &mut page)
                {
                    break;
                }
            }
            return Ok(page);
        }
        let prefix = keys::object_prefix(q.kind);
        let start = match after {
            Some(a) => Bound::Excluded(keys::object(q.kind, a)),
            None => Bound::Included(prefix.clone()),
        };
        for item in inner.tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if !accept(record::decode_object(q.kind, &v)?, &mut page) {
                break;
            }
        }
        Ok(page)
    }

    fn counts(&self) -> Result<BTreeMap<KindId, u64>, StoreError> {
        Ok(lock(&self.inner.writer).counts.clone())
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
            out.push(record::decode_change(&v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = &*self.inner;
        let limit = q.limit.max(1);
        let in_time =
            |t: i64| q.since_nanos.is_none_or(|s| t >= s) && q.until_nanos.is_none_or(|u| t < u);
        let who = |p: &str| q.principal.as_deref().is_none_or(|w| w == p);
        let mut accepted = Vec::new();
        let upto = inner.committed.load(Ordering::SeqCst);
        match (q.kind, &q.name) {
            (Some(kind), Some(name)) => {
                let prefix = keys::history_prefix(kind, name);
                let start = keys::history(kind, name, q.after_revision.saturating_add(1));
                for item in inner.tree.range(start..) {
                    let (k, _) = item?;
                    if !k.starts_with(&prefix) || accepted.len() >= limit {
                        break;
                    }
                    let Some(rev) = keys::be_u64(&k) else {
                        continue;
                    };
                    if let Some(v) = inner.tree.get(keys::event(rev))? {
                        let c = record::decode_change(&v)?;
                        if who(&c.meta.principal) && in_time(c.meta.time_unix_nanos) {
                            accepted.push(c);
                        }
                    }
                }
            }
            _ => {
                let start = keys::event(q.after_revision.saturating_add(1));
                let end = keys::event(upto);
                for item in inner.tree.range(start..=end) {
                    if accepted.len() >= limit {
                        break;
                    }
                    let (_, v) = item?;
                    let c = record::decode_change(&v)?;
                    if q.kind.is_none_or(|k| k == c.kind)
                        && q.name.as_deref().is_none_or(|n| n == c.name)
                        && who(&c.meta.principal)
                        && in_time(c.meta.time_unix_nanos)
                    {
                        accepted.push(c);
                    }
                }
            }
        }
        let mut refused = Vec::new();
        if q.include_refused {
            let start = keys::refusal(q.after_seq.saturating_add(1));
            for item in inner.tree.range(start..) {
                let (k, v) = item?;
                if k.first() != Some(&keys::REFUSAL) || refused.len() >= limit {
                    break;
                }
                let r = record::decode_refusal(&v)?;
                if q.kind.is_none_or(|k| k == r.kind)
                    && q.name.as_deref().is_none_or(|n| n == r.name)
                    && who(&r.meta.principal)
                    && in_time(r.meta.time_unix_nanos)
                {
                    refused.push(r);
                }
            }
        }
        // Merge the two ordered sources by time; each is consumed as a prefix, so a page token
        // of (last revision, last sequence) resumes exactly.
        let mut out = Vec::with_capacity(limit);
        let (mut a, mut r) = (
            accepted.into_iter().peekable(),
            refused.into_iter().peekable(),
        );
        while out.len() < limit {
            let take_accepted = match (a.peek(), r.peek()) {
                (Some(x), Some(y)) => x.meta.time_unix_nanos <= y.meta.time_unix_nanos,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_accepted {
                a.next().map(AuditEntry::Accepted)
            } else {
                r.next().map(AuditEntry::Refused)
            };
            out.extend(next);
        }
        Ok(out)
    }

    fn record_refusal(&self, mut r: Refusal) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut seq = lock(&inner.refusals);
        *seq += 1;
        r.seq = *seq;
        let mut batch = Batch::default();
        batch.insert(&keys::refusal(*seq)[..], record::encode_refusal(&r)?);
        batch.insert(keys::META_REFUSAL_SEQ, &seq.to_be_bytes());
        if *seq > MAX_REFUSALS {
            batch.remove(&keys::refusal(*seq - MAX_REFUSALS)[..]);
        }
        inner.tree.apply_batch(batch)?;
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

    fn put_token(&self, t: StoredToken) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        // Under the writer lock so a concurrent backup sees it or not, never half.
        let w = lock(&inner.writer);
        inner
            .tree
            .insert(keys::token(&t.hash), record::encode_token(&t)?)?;
        let revision = w.revision;
        drop(w);
        inner.flush_once().map_err(StoreError::Io)?;
        Ok(revision)
    }

    fn backup(&self, out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        // Holding both locks stops every writer, so the scan is a consistent snapshot.
        let w = lock(&inner.writer);
        let _r = lock(&inner.refusals);
        let n = super::backup::write_snapshot(inner.tree.iter(), out)?;
        drop(w);
        Ok(n)
    }

    fn flush_stats(&self) -> FlushStats {
        *lock(&self.inner.stats)
    }
}
