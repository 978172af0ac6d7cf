//! Backup file format and restore.
//!
//! A backup is every key and value of the store as they were when it started (a copy-on-write
//! snapshot, `snapshot.rs`, so writers are not held while it is copied): one consistent
//! revision. Layout (version 2): the magic line `MUSTER-BACKUP 2\n`, a `u32` attachment length
//! and the attachment (opaque to the store: the encrypted keys bundle, or empty), then frames of
//! `u32 key length, key, u32 value length, value` (big-endian), then a trailer frame whose key
//! length is `u32::MAX`, followed by the `u64` frame count and the SHA-256 of everything before
//! the trailer. Restore refuses a file whose count or checksum does not match. Version 1 files
//! (`MUSTER-BACKUP 1\n`, no attachment) still restore.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::StoreError;

const MAGIC: &[u8] = b"MUSTER-BACKUP 2\n";
const MAGIC_V1: &[u8] = b"MUSTER-BACKUP 1\n";
/// Largest attachment a restore accepts (a keys bundle is a few KiB).
const MAX_ATTACHMENT: usize = 1024 * 1024;
const TRAILER: u32 = u32::MAX;

/// Why a backup could not be restored.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{0} is not empty; restore only into an empty or new data directory")]
    NotEmpty(String),
    #[error("not a muster backup (bad header)")]
    BadMagic,
    #[error("backup is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct HashingWriter<'a> {
    out: &'a mut dyn Write,
    hash: Sha256,
}

impl HashingWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("writing backup: {e}"))
}

fn frame_len(n: usize) -> Result<[u8; 4], StoreError> {
    let n = u32::try_from(n).map_err(|_| StoreError::Io("value too large for backup".into()))?;
    Ok(n.to_be_bytes())
}

/// Writes `attachment` and every pair of `items` as a backup; returns the number of pairs.
pub(super) fn write_snapshot(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    attachment: &[u8],
    out: &mut dyn Write,
) -> Result<u64, StoreError> {
    let mut w = HashingWriter {
        out,
        hash: Sha256::new(),
    };
    w.put(MAGIC).map_err(io)?;
    w.put(&frame_len(attachment.len())?).map_err(io)?;
    w.put(attachment).map_err(io)?;
    let mut count = 0u64;
    for item in items {
        let (k, v) = item?;
        w.put(&frame_len(k.len())?).map_err(io)?;
        w.put(&k).map_err(io)?;
        w.put(&frame_len(v.len())?).map_err(io)?;
        w.put(&v).map_err(io)?;
        count += 1;
    }
    let digest = w.hash.finalize();
    w.out.write_all(&TRAILER.to_be_bytes()).map_err(io)?;
    w.out.write_all(&count.to_be_bytes()).map_err(io)?;
    w.out.write_all(&digest).map_err(io)?;
    w.out.flush().map_err(io)?;
    Ok(count)
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Corrupt("unexpected end of file".into()),
        _ => BackupError::Io(e),
    })
}

/// A backup being read: its header and attachment are read by `open_backup`, so the caller
/// can act on the attachment (decrypt the keys) before anything is written.
pub struct BackupReader<'a> {
    input: &'a mut dyn Read,
    hash: Sha256,
    attachment: Vec<u8>,
}

impl std::fmt::Debug for BackupReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader").finish_non_exhaustive()
    }
}

/// Reads a backup's header and attachment (empty for version 1 files and backups without one).
pub fn open_backup(input: &mut dyn Read) -> Result<BackupReader<'_>, BackupError> {
    let mut magic = [0u8; MAGIC.len()];
    read_exact(input, &mut magic)?;
    let mut hash = Sha256::new();
    hash.update(magic);
    let mut attachment = Vec::new();
    if magic == MAGIC {
        let mut len = [0u8; 4];
        read_exact(input, &mut len)?;
        hash.update(len);
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_ATTACHMENT {
            return Err(BackupError::Corrupt(format!(
                "attachment of {n} bytes exceeds {MAX_ATTACHMENT}"
            )));
        }
        attachment = vec![0u8; n];
        read_exact(input, &mut attachment)?;
        hash.update(&attachment);
    } else if magic != MAGIC_V1 {
        return Err(BackupError::BadMagic);
    }
    Ok(BackupReader {
        input,
        hash,
        attachment,
    })
}

impl BackupReader<'_> {
    /// What the backup carries beside the store (empty: nothing).
    pub fn attachment(&self) -> &[u8] {
        &self.attachment
    }

    /// Restores the records into `dir`, which must be absent or empty. On any error the partly
    /// restored directory is removed, so a failed restore never leaves a store that opens.
    pub fn restore_into(self, dir: &Path) -> Result<u64, BackupError> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(BackupError::NotEmpty(dir.display().to_string()));
        }
        let result = restore_inner(self.input, self.hash, dir);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }
}

fn restore_inner(input: &mut dyn Read, mut hash: Sha256, dir: &Path) -> Result<u64, BackupError> {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .map_err(StoreError::from)?;
    let mut count = 0u64;
    let mut len = [0u8; 4];
    loop {
        read_exact(input, &mut len)?;
        let n = u32::from_be_bytes(len);
        if n == TRAILER {
            break;
        }
        hash.update(len);
        let mut key = vec![0u8; n as usize];
        read_exact(input, &mut key)?;
        hash.update(&key);
        read_exact(input, &mut len)?;
        hash.update(len);
        let mut value = vec![0u8; u32::from_be_bytes(len) as usize];
        read_exact(input, &mut value)?;
        hash.update(&value);
        db.insert(key, value).map_err(StoreError::from)?;
        count += 1;
    }
    let mut n = [0u8; 8];
    read_exact(input, &mut n)?;
    let mut digest = [0u8; 32];
    read_exact(input, &mut digest)?;
    if u64::from_be_bytes(n) != count {
        return Err(BackupError::Corrupt(format!(
            "trailer says {} records, file holds {count}",
            u64::from_be_bytes(n)
        )));
    }
    if hash.finalize().as_slice() != digest {
        return Err(BackupError::Corrupt("checksum mismatch".into()));
    }
    db.flush().map_err(StoreError::from)?;
    std::fs::File::open(dir.join("db"))?.sync_data()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A version 1 file as the previous musterd wrote it: no attachment.
    fn v1_file(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = MAGIC_V1.to_vec();
        for (k, v) in pairs {
            body.extend_from_slice(&(k.len() as u32).to_be_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(&(v.len() as u32).to_be_bytes());
            body.extend_from_slice(v);
        }
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&TRAILER.to_be_bytes());
        body.extend_from_slice(&(pairs.len() as u64).to_be_bytes());
        body.extend_from_slice(&digest);
        body
    }

    fn read_back(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = sled::open(dir).unwrap();
        db.iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn version_1_files_still_restore() {
        let file = v1_file(&[(b"a", b"1"), (b"b", b"22")]);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let mut input = file.as_slice();
        let reader = open_backup(&mut input).unwrap();
        assert!(reader.attachment().is_empty());
        assert_eq!(reader.restore_into(&target).unwrap(), 2);
        assert_eq!(
            read_back(&target),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"22".to_vec())
            ]
        );
    }

    #[test]
    fn version_2_carries_an_authenticated_attachment() {
        let items = vec![Ok((
            sled::IVec::from(&b"k"[..]),
            sled::IVec::from(&b"v"[..]),
        ))];
        let mut file = Vec::new();
        assert_eq!(
            write_snapshot(items.into_iter(), b"bundle", &mut file).unwrap(),
            1
        );
        assert!(file.starts_with(MAGIC));
        let dir = tempfile::tempdir().unwrap();
        let mut input = file.as_slice();
        let reader = open_backup(&mut input).unwrap();
        assert_eq!(reader.attachment(), b"bundle");
        assert_eq!(reader.restore_into(&dir.path().join("ok")).unwrap(), 1);
        // The checksum covers the attachment: changing it fails the restore.
        let at = MAGIC.len() + 4;
        file[at] ^= 1;
        let mut input = file.as_slice();
        let target = dir.path().join("bad");
        let err = open_backup(&mut input)
            .unwrap()
            .restore_into(&target)
            .unwrap_err();
        assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
        assert!(!target.exists());
    }
}
