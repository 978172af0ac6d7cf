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
/// Largest key a backup frame may claim (store keys are a prefix byte and a name or id).
pub(super) const MAX_KEY: usize = 64 * 1024;
/// Largest value a backup frame may claim. Values are bounded by the largest request
/// (`max_message_bytes`, 4 MiB by default) and its change record; this leaves room for a
/// raised limit. A restore checks it before allocating, so a corrupt or hostile length cannot
/// make it reserve gigabytes; a backup refuses to write a larger record than it can restore.
pub(super) const MAX_VALUE: usize = 256 * 1024 * 1024;

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

fn frame_len(n: usize, max: usize, what: &str, key: &[u8]) -> Result<[u8; 4], StoreError> {
    if n > max {
        return Err(StoreError::Io(format!(
            "cannot back up the record at key {:?}: its {what} is {n} bytes, more than a backup \
             frame holds ({max})",
            String::from_utf8_lossy(&key[..key.len().min(64)])
        )));
    }
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
    w.put(&frame_len(
        attachment.len(),
        MAX_ATTACHMENT,
        "attachment",
        b"",
    )?)
    .map_err(io)?;
    w.put(attachment).map_err(io)?;
    let mut count = 0u64;
    for item in items {
        let (k, v) = item?;
        w.put(&frame_len(k.len(), MAX_KEY, "key", &k)?)
            .map_err(io)?;
        w.put(&k).map_err(io)?;
        w.put(&frame_len(v.len(), MAX_VALUE, "value", &k)?)
            .map_err(io)?;
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
    /// Bytes read so far (where the records begin).
    offset: u64,
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
    let offset = (magic.len()
        + if magic == MAGIC {
            4 + attachment.len()
        } else {
            0
        }) as u64;
    Ok(BackupReader {
        input,
        hash,
        attachment,
        offset,
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
        let result = restore_inner(self.input, self.hash, self.offset, dir);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }
}

/// Reads a frame of `n` bytes claimed by the length field at `at` (record `index`), refusing a
/// claim over `max` before allocating anything.
fn read_frame(
    input: &mut dyn Read,
    n: u32,
    max: usize,
    what: &str,
    index: u64,
    at: u64,
) -> Result<Vec<u8>, BackupError> {
    let n = n as usize;
    if n > max {
        return Err(BackupError::Corrupt(format!(
            "record {index}: the length at byte offset {at} claims a {what} of {n} bytes, more \
             than a backup record may hold ({max}); the file is damaged or not a muster backup"
        )));
    }
    let mut buf = vec![0u8; n];
    read_exact(input, &mut buf)?;
    Ok(buf)
}

fn restore_inner(
    input: &mut dyn Read,
    mut hash: Sha256,
    mut offset: u64,
    dir: &Path,
) -> Result<u64, BackupError> {
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
        let key = read_frame(input, n, MAX_KEY, "key", count, offset)?;
        offset += 4 + key.len() as u64;
        hash.update(&key);
        read_exact(input, &mut len)?;
        hash.update(len);
        let value = read_frame(
            input,
            u32::from_be_bytes(len),
            MAX_VALUE,
            "value",
            count,
            offset,
        )?;
        offset += 4 + value.len() as u64;
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

    /// Before: the claimed length was allocated (4 GiB) before anything was checked.
    #[test]
    fn a_claimed_length_over_the_record_limit_is_refused_naming_the_offset() {
        let mut file = v1_file(&[(b"a", b"1")]);
        // A second record claiming a 4 GiB value, then the file just ends.
        file.truncate(file.len() - 4 - 8 - 32);
        file.extend_from_slice(&1u32.to_be_bytes());
        file.push(b'k');
        file.extend_from_slice(&(u32::MAX - 1).to_be_bytes());
        file.extend_from_slice(b"tiny");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        let mut input = file.as_slice();
        let err = open_backup(&mut input)
            .unwrap()
            .restore_into(&target)
            .unwrap_err();
        let msg = err.to_string();
        // Header 16, record 0 at 16 (4+1+4+1 bytes), record 1's key at 26, its value's length
        // at 31.
        assert!(
            msg.contains(
                "record 1: the length at byte offset 31 claims a value of 4294967294 bytes"
            ),
            "{msg}"
        );
        assert!(msg.contains(&MAX_VALUE.to_string()), "{msg}");
        assert!(!target.exists());
        // A key over its limit too.
        let mut file = MAGIC_V1.to_vec();
        file.extend_from_slice(&(MAX_KEY as u32 + 1).to_be_bytes());
        let mut input = file.as_slice();
        let err = open_backup(&mut input)
            .unwrap()
            .restore_into(&target)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("record 0: the length at byte offset 16 claims a key of"),
            "{err}"
        );
        // And a backup refuses to write what it could not restore.
        let big = vec![0u8; MAX_KEY + 1];
        let items = vec![Ok((sled::IVec::from(big), sled::IVec::from(&b"v"[..])))];
        let e = write_snapshot(items.into_iter(), b"", &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("more than a backup frame holds"),
            "{e}"
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
