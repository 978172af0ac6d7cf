//! Unit tests of the sled store's own machinery.

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
