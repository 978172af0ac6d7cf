//! Group flushes: the flusher thread, blob syncing, and what a failed flush poisons.

use super::*;

impl Inner {
    /// Stops acknowledging anything until a restart (see `poisoned`).
    pub(super) fn poison(&self, why: &str) {
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
    pub(super) fn flush_deferred(&self, why: &str, attempt: u32) {
        if attempt == 1 || attempt.is_multiple_of(10) {
            tracing::warn!(error = %why, attempt, "flush deferred: out of file descriptors; retrying");
        }
        if attempt >= crate::store::flush_error::REPORT_AFTER {
            let msg = format!("cannot sync to disk right now ({why}); retry later");
            let _ = self.durable.send_replace(Err(msg.clone()));
            let _ = self.durable_batches.send_replace(Err(msg));
        }
    }

    pub(super) fn request_flush(&self) {
        let mut g = lock(&self.flush_generation);
        *g += 1;
        self.flush_wanted.notify_one();
    }

    pub(super) fn flush_once(&self) -> Result<(), FlushFailure> {
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
    pub(super) fn sync_blobs(
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

    pub(super) fn run_flusher(&self) {
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
}
