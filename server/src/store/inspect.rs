//! `musterd inspect`: raw access to a stopped server's store, for forensics and drills.
//!
//! Everything above `store/` sees records through the `Store` trait; this is the one way to
//! see (and, for tamper and capacity drills, change) the bytes underneath without naming sled
//! anywhere else. It opens the data directory exclusively, so it refuses while `musterd` runs.
//! Keys are shown and read in an escaped form: printable ASCII as is, `\\` for a backslash,
//! `\xNN` for any other byte.

use std::fmt::Write as _;
use std::path::Path;

use thiserror::Error;

/// Why an inspection failed.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error(
        "cannot open the store in {dir}: {cause} (is musterd still running on it? stop it first)"
    )]
    Open { dir: String, cause: String },
    #[error("store: {0}")]
    Store(String),
    #[error("key {0:?}: bad escape (use \\\\ for a backslash and \\xNN for a byte)")]
    BadKey(String),
    #[error("no record under key {0}")]
    NoKey(String),
    #[error("the record under {key} does not contain {find:?}")]
    NotFound { key: String, find: String },
}

fn store_err(e: sled::Error) -> InspectError {
    InspectError::Store(e.to_string())
}

/// A stopped server's store, opened for inspection.
pub struct Inspector {
    db: sled::Db,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector").finish_non_exhaustive()
    }
}

/// `key` in the escaped form.
pub fn escape_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// The bytes of an escaped key.
pub fn unescape_key(s: &str) -> Result<Vec<u8>, InspectError> {
    let bad = || InspectError::BadKey(s.to_string());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => match bytes.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = s.get(i + 2..i + 4).ok_or_else(bad)?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                    i += 4;
                }
                _ => return Err(bad()),
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

impl Inspector {
    /// Opens the store in `dir` (exclusively: fails while musterd runs on it).
    pub fn open(dir: &Path) -> Result<Self, InspectError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| InspectError::Open {
                dir: dir.display().to_string(),
                cause: e.to_string(),
            })?;
        Ok(Self { db })
    }

    /// Keys under `prefix` whose escaped form contains `key_contains` and whose value
    /// contains `value_contains` (empty: any), in key order.
    pub fn keys(
        &self,
        prefix: &[u8],
        key_contains: &str,
        value_contains: &[u8],
    ) -> Result<Vec<Vec<u8>>, InspectError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefix) {
            let (k, v) = item.map_err(store_err)?;
            if !key_contains.is_empty() && !escape_key(&k).contains(key_contains) {
                continue;
            }
            if !value_contains.is_empty()
                && !v.windows(value_contains.len()).any(|w| w == value_contains)
            {
                continue;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// The record under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, InspectError> {
        Ok(self.db.get(key).map_err(store_err)?.map(|v| v.to_vec()))
    }

    /// Replaces the first occurrence of `find` in the record under `key` with `replace`, and
    /// flushes. A tamper drill: `muster audit verify` must then name the entry.
    pub fn patch(&self, key: &[u8], find: &[u8], replace: &[u8]) -> Result<(), InspectError> {
        let shown = escape_key(key);
        let v = self
            .get(key)?
            .ok_or_else(|| InspectError::NoKey(shown.clone()))?;
        let at = v
            .windows(find.len().max(1))
            .position(|w| w == find)
            .ok_or_else(|| InspectError::NotFound {
                key: shown,
                find: String::from_utf8_lossy(find).into_owned(),
            })?;
        let mut patched = Vec::with_capacity(v.len() - find.len() + replace.len());
        patched.extend_from_slice(&v[..at]);
        patched.extend_from_slice(replace);
        patched.extend_from_slice(&v[at + find.len()..]);
        self.db.insert(key, patched).map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        Ok(())
    }

    /// Writes `count` inert records of `bytes` bytes under `prefix` (which must start with
    /// `atest-`, a range no layer reads), in batches, and flushes: a capacity drill for
    /// backups and restores of a large store.
    pub fn fill(&self, prefix: &str, count: u32, bytes: usize) -> Result<(), InspectError> {
        if !prefix.starts_with("atest-") {
            return Err(InspectError::BadKey(format!(
                "{prefix} (fill writes only under atest-...)"
            )));
        }
        let value = vec![b'f'; bytes.min(1 << 20)];
        let mut batch = sled::Batch::default();
        for i in 0..count {
            batch.insert(format!("{prefix}{i:08}").as_bytes(), &value[..]);
            if i % 10_000 == 9_999 {
                self.db
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(store_err)?;
            }
        }
        self.db.apply_batch(batch).map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_and_unescape_round_trip() {
        let key = [b'e', 0, 0, 0, 0, 0, 0, 1, 0xff, b'\\', b'a', b' '];
        let shown = escape_key(&key);
        assert_eq!(shown, "e\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\xff\\\\a\\x20");
        assert_eq!(unescape_key(&shown).unwrap(), key);
        assert!(unescape_key("a\\q").is_err());
        assert!(unescape_key("a\\x4").is_err());
    }

    #[test]
    fn patch_find_and_fill() {
        let dir = tempfile::tempdir().unwrap();
        let i = Inspector::open(dir.path()).unwrap();
        i.fill("atest-x/", 3, 4).unwrap();
        assert!(i.fill("e", 1, 1).is_err(), "fill only under atest-");
        i.db.insert(b"k1", &b"reason tamper-target"[..]).unwrap();
        let hits = i.keys(b"", "", b"tamper-target").unwrap();
        assert_eq!(hits, vec![b"k1".to_vec()]);
        assert_eq!(i.keys(b"atest-x/", "", b"").unwrap().len(), 3);
        i.patch(b"k1", b"tamper", b"Tamper").unwrap();
        assert_eq!(i.get(b"k1").unwrap().unwrap(), b"reason Tamper-target");
        assert!(matches!(
            i.patch(b"k1", b"absent", b"x"),
            Err(InspectError::NotFound { .. })
        ));
        // A second opener is refused while the first holds the store.
        assert!(matches!(
            Inspector::open(dir.path()),
            Err(InspectError::Open { .. })
        ));
    }
}
