//! Why a flush failed, and whether it may simply be retried. Running out of descriptors
//! (EMFILE/ENFILE) while listing or opening sled's blob files loses nothing: the data is
//! written, only not yet synced, so it must not poison the store until restart the way a
//! failed write or fdatasync does (issue 12, item 5).

use std::io;
use std::time::Duration;

use crate::listen::is_descriptor_exhaustion;

/// Pause before retrying a flush that failed transiently.
pub(super) const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Transient failures in a row after which waiting writers are answered UNAVAILABLE (about
/// a second); shorter shortages only delay them.
pub(super) const REPORT_AFTER: u32 = 10;

/// Transient failures tolerated in a row once shutdown is requested, before the store gives
/// up (so that stopping cannot hang on a descriptor shortage that never ends).
pub(super) const RETRIES_WHEN_STOPPING: u32 = 20;

/// A failed flush.
#[derive(Debug)]
pub(super) struct FlushFailure {
    pub why: String,
    /// Retrying later is safe (nothing was lost).
    pub transient: bool,
}

impl FlushFailure {
    /// A failure that leaves the store's state unknown (sled's flush, an fsync).
    pub fn fatal(why: String) -> Self {
        Self {
            why,
            transient: false,
        }
    }

    /// A failure to list or open `what`: transient when for want of descriptors.
    pub fn opening(what: &str, e: &io::Error) -> Self {
        Self {
            why: format!("{what}: {e}"),
            transient: is_descriptor_exhaustion(e),
        }
    }
}

/// Test hook: the next `n` listings of the blob directory fail with EMFILE, as they would with
/// every descriptor taken (a real RLIMIT_NOFILE would hit every test in the process).
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct InjectEmfile(std::sync::atomic::AtomicU32);

#[cfg(test)]
impl InjectEmfile {
    pub fn set(&self, n: u32) {
        self.0.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Consumes one injected failure, if any is left.
    pub fn take(&self) -> Option<io::Error> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| io::Error::from_raw_os_error(24))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests measure or wait on real time
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::REPORT_AFTER;
    use crate::store::{AuxWrite, SledStore, Store, StoreError, StoreOptions, wait_durable_batch};

    fn big_put(key: &[u8]) -> AuxWrite {
        AuxWrite {
            guards: Vec::new(),
            // Over a quarter segment: sled writes it as a blob file, so the flush lists blobs.
            puts: vec![(key.to_vec(), Some(vec![7u8; 300 * 1024]))],
            mutation: None,
        }
    }

    /// Before: the EMFILE poisoned the store, and every later write failed until a restart.
    #[tokio::test]
    async fn running_out_of_descriptors_defers_a_flush_without_poisoning() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), &StoreOptions::default()).unwrap();
        let wait =
            |batch| tokio::time::timeout(Duration::from_secs(5), wait_durable_batch(&store, batch));

        // A short shortage only delays the write.
        store.inject_emfile(1);
        let a = store.commit_aux(big_put(b"a")).applied().await.unwrap();
        wait(a.batch).await.unwrap().unwrap();

        // A longer one answers UNAVAILABLE (StoreError::Io), unless the retry won the race.
        store.inject_emfile(REPORT_AFTER + 5);
        let b = store.commit_aux(big_put(b"b")).applied().await.unwrap();
        if let Err(e) = wait(b.batch).await.unwrap() {
            assert!(
                matches!(&e, StoreError::Io(m) if m.contains("retry later")),
                "{e}"
            );
        }
        // Then the store recovers by itself: the deferred write becomes durable...
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(&*store.durable_batches().borrow(), Ok(n) if *n >= b.batch) {
            assert!(
                std::time::Instant::now() < deadline,
                "the store did not recover"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and the next write works.
        let c = store.commit_aux(big_put(b"c")).applied().await.unwrap();
        wait(c.batch).await.unwrap().unwrap();
        for k in [&b"a"[..], b"b", b"c"] {
            assert!(store.aux_get(k).unwrap().is_some());
        }
    }
}
