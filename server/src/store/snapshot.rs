//! Online backup without stopping writers: a copy-on-write snapshot over sled.
//!
//! sled has no snapshots, and holding the writer for the whole copy stalled every write for as
//! long as the copy took. Instead, every write to the tree goes through [`Snapshots::apply`]:
//! while a backup runs, a write first saves the value each of its keys had (or its absence)
//! unless the backup has already copied that key or saved it before. The backup copies the tree
//! in key order, in chunks of [`CHUNK_KEYS`] or [`CHUNK_BYTES`], taking the saved value where there is one. The
//! result is exactly the state at the moment the backup started (a batch boundary), while
//! writers wait at most for one chunk to be read (not written out or hashed). Memory: one saved
//! value per distinct key written ahead of the copy during the backup; each is dropped once the
//! copy passes its key.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use sled::{IVec, Tree};

use super::StoreError;

/// Keys read from the tree per lock hold during a backup...
pub(super) const CHUNK_KEYS: usize = 1024;
/// ...or fewer, once their values reach this many bytes (a writer waits for one chunk read).
pub(super) const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A write batch that remembers its keys (sled's `Batch` does not expose them), so that a
/// running backup can save their old values first.
#[derive(Default)]
pub(super) struct Batch {
    sled: sled::Batch,
    keys: Vec<IVec>,
}

impl Batch {
    pub(super) fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let key = key.into();
        self.keys.push(key.clone());
        self.sled.insert(key, value);
    }

    pub(super) fn remove<K: Into<IVec>>(&mut self, key: K) {
        let key = key.into();
        self.keys.push(key.clone());
        self.sled.remove(key);
    }
}

/// The copy in progress: how far it got and the values it still needs from before writes.
struct Active {
    /// Last key copied; None before the first chunk.
    cursor: Option<IVec>,
    /// Key → its value when the backup started (None: it did not exist then).
    saved: BTreeMap<IVec, Option<IVec>>,
}

/// The tree's write gate and the backup in progress, if any.
#[derive(Default)]
pub(super) struct Snapshots {
    active: Mutex<Option<Active>>,
    /// Held for a whole backup: one copy at a time.
    one_at_a_time: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshots {
    /// Applies `batch` atomically with respect to a backup: its keys' old values are saved
    /// first when a backup still has to copy them.
    pub(super) fn apply(&self, tree: &Tree, batch: Batch) -> Result<(), StoreError> {
        let mut g = lock(&self.active);
        if let Some(a) = g.as_mut() {
            for k in batch.keys {
                let ahead = a.cursor.as_ref().is_none_or(|c| k > *c);
                if ahead && !a.saved.contains_key(&k) {
                    let old = tree.get(&k)?;
                    a.saved.insert(k, old);
                }
            }
        }
        tree.apply_batch(batch.sled)?;
        Ok(())
    }

    /// Writes the tree as it is now, through `write` (e.g. the backup file format), without
    /// holding writers for longer than one chunk read at a time.
    pub(super) fn copy<T>(
        &self,
        tree: &Tree,
        write: impl FnOnce(&mut dyn Iterator<Item = sled::Result<(IVec, IVec)>>) -> T,
    ) -> T {
        let _one = lock(&self.one_at_a_time);
        *lock(&self.active) = Some(Active {
            cursor: None,
            saved: BTreeMap::new(),
        });
        let mut chunks = Chunks {
            owner: self,
            tree,
            buffer: Vec::new().into_iter(),
            done: false,
        };
        write(&mut chunks)
    }

    /// Reads the next chunk of the snapshot: live values where unchanged, saved ones where a
    /// write came first. Returns whether this was the last chunk.
    fn next_chunk(&self, tree: &Tree) -> sled::Result<(Vec<(IVec, IVec)>, bool)> {
        let mut g = lock(&self.active);
        let Some(a) = g.as_mut() else {
            return Ok((Vec::new(), true));
        };
        let from = match &a.cursor {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        let mut merged: BTreeMap<IVec, Option<IVec>> = BTreeMap::new();
        let mut last = None;
        let (mut n, mut bytes, mut done) = (0, 0, true);
        for item in tree.range::<IVec, _>((from.clone(), Bound::Unbounded)) {
            let (k, v) = item?;
            bytes += k.len() + v.len();
            last = Some(k.clone());
            merged.insert(k, Some(v));
            n += 1;
            if n == CHUNK_KEYS || bytes >= CHUNK_BYTES {
                done = false;
                break;
            }
        }
        let upto = match (&last, done) {
            (Some(l), false) => Bound::Included(l.clone()),
            _ => Bound::Unbounded,
        };
        // Keys written since the start within this chunk's span: their old value (or their
        // absence) is what the snapshot holds. Past the cursor they are never needed again.
        let saved: Vec<IVec> = a
            .saved
            .range((from, upto))
            .map(|(k, _)| k.clone())
            .collect();
        for k in saved {
            if let Some(old) = a.saved.remove(&k) {
                merged.insert(k, old);
            }
        }
        a.cursor = last.or(a.cursor.take());
        let chunk = merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        Ok((chunk, done))
    }
}

/// The snapshot as an iterator, refilled a chunk at a time.
struct Chunks<'a> {
    owner: &'a Snapshots,
    tree: &'a Tree,
    buffer: std::vec::IntoIter<(IVec, IVec)>,
    done: bool,
}

impl Drop for Chunks<'_> {
    /// However the copy ends (done, failed, or the writer panicked), writers stop saving.
    fn drop(&mut self) {
        *lock(&self.owner.active) = None;
    }
}

impl Iterator for Chunks<'_> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        // Bounded: every refill either yields keys or ends the copy.
        loop {
            if let Some(kv) = self.buffer.next() {
                return Some(Ok(kv));
            }
            if self.done {
                return None;
            }
            match self.owner.next_chunk(self.tree) {
                Ok((chunk, done)) => {
                    self.done = done;
                    self.buffer = chunk.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(s: &Snapshots, t: &Tree, k: &[u8], v: Option<&[u8]>) {
        let mut b = Batch::default();
        match v {
            Some(v) => b.insert(k, v),
            None => b.remove(k),
        }
        s.apply(t, b).unwrap();
    }

    /// Writes during the copy (updates, deletes, inserts, ahead of and behind the cursor) do not
    /// show in it: the copy is the state at its start.
    #[test]
    fn a_copy_is_the_state_at_its_start() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree: Tree = (*db).clone();
        let s = Snapshots::default();
        let n = CHUNK_KEYS * 3 + 7;
        for i in 0..n {
            put(&s, &tree, format!("k{i:06}").as_bytes(), Some(b"old"));
        }
        let before: Vec<(IVec, IVec)> = tree.iter().map(Result::unwrap).collect();
        let copied = s.copy(&tree, |it| {
            let mut out = Vec::new();
            for (i, kv) in it.enumerate() {
                out.push(kv.unwrap());
                // Touch keys everywhere while copying.
                let j = (i * 7919) % n;
                put(&s, &tree, format!("k{j:06}").as_bytes(), Some(b"new"));
                put(&s, &tree, format!("k{:06}", (j + 1) % n).as_bytes(), None);
                put(&s, &tree, format!("k{j:06}x").as_bytes(), Some(b"added"));
            }
            out
        });
        assert_eq!(copied.len(), before.len());
        assert!(
            copied == before,
            "the copy differs from the state at its start"
        );
        assert!(lock(&s.active).is_none());
    }
}
