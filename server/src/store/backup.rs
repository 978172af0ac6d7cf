//! Backup file format and restore.
//!
//! A backup is every key and value of the store as they were when it started (a copy-on-write
//! snapshot, `snapshot.rs`, so writers are not held while it is copied): one consistent
//! revision. Layout: the magic line `MUSTER-BACKUP 1\n`, then frames of
//! `u32 key length, key, u32 value length, value` (big-endian), then a trailer frame whose key
//! length is `u32::MAX`, followed by the `u64` frame count and the SHA-256 of everything before
//! the trailer. Restore refuses a file whose count or checksum does not match.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::StoreError;

const MAGIC: &[u8] = b"MUSTER-BACKUP 1\n";
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

/// Writes every pair of `items` as a backup; returns the number of pairs.
pub(super) fn write_snapshot(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    out: &mut dyn Write,
) -> Result<u64, StoreError> {
    let mut w = HashingWriter {
        out,
        hash: Sha256::new(),
    };
    w.put(MAGIC).map_err(io)?;
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

/// Restores a backup into `dir`, which must be absent or empty. On any error the partly
/// restored directory is removed, so a failed restore never leaves a store that opens.
pub fn restore_into(input: &mut dyn Read, dir: &Path) -> Result<u64, BackupError> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    let result = restore_inner(input, dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn restore_inner(input: &mut dyn Read, dir: &Path) -> Result<u64, BackupError> {
    let mut magic = [0u8; MAGIC.len()];
    read_exact(input, &mut magic)?;
    if magic != MAGIC {
        return Err(BackupError::BadMagic);
    }
    let mut hash = Sha256::new();
    hash.update(magic);
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
