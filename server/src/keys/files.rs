//! The key files on disk: reading them, creating them (never over an existing file), and the
//! passphrase files operators hand to backup and restore.

use std::io::{Read, Write};
use std::path::Path;

use rand::RngCore;

use super::{KeyError, KeyFiles, KeyPaths};

/// Largest passphrase file read: a passphrase is short, anything bigger is the wrong file.
pub const MAX_PASSPHRASE_FILE: u64 = 4096;

/// Writes a new file readable only by its owner; fails if the file exists.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_new_file(path, bytes, 0o600)
}

/// Writes a new file with `mode` and syncs it; fails if the file exists, so nothing is ever
/// silently replaced.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
    let path = path.to_path_buf();
    move |source| KeyError::Io { path, source }
}

/// Reads a file, or None when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The secrets key, or None when its file does not exist.
pub fn read_secrets_key(path: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let key = bytes.try_into().map_err(|_| KeyError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a secrets key file must hold exactly 32 bytes",
        ),
    })?;
    Ok(Some(key))
}

/// Creates a new random secrets key file (0600).
pub fn create_secrets_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_private_file(path, &key).map_err(io_err(path))?;
    Ok(key)
}

/// The CA's certificate and key PEM, None when neither file exists; one without the other is
/// refused (the pair belongs together, and creating the missing half would not match).
pub fn read_ca(paths: &KeyPaths) -> Result<Option<(String, String)>, KeyError> {
    let cert = read_optional(&paths.ca_cert)?;
    let key = read_optional(&paths.ca_key)?;
    let text = |path: &Path, b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| KeyError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not PEM text"),
        })
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((text(&paths.ca_cert, c)?, text(&paths.ca_key, k)?))),
        (Some(_), None) => Err(KeyError::Incomplete {
            present: paths.ca_cert.clone(),
            missing: paths.ca_key.clone(),
        }),
        (None, Some(_)) => Err(KeyError::Incomplete {
            present: paths.ca_key.clone(),
            missing: paths.ca_cert.clone(),
        }),
    }
}

/// Reads all three key files, for a backup; every one must exist.
pub fn read_all(paths: &KeyPaths) -> Result<KeyFiles, KeyError> {
    let missing = |path: &Path| KeyError::Missing {
        file: path.to_path_buf(),
        what: "a backup with --passphrase-file carries it",
    };
    let secrets_key =
        read_secrets_key(&paths.secrets_key)?.ok_or_else(|| missing(&paths.secrets_key))?;
    let (ca_cert_pem, ca_key_pem) = read_ca(paths)?.ok_or_else(|| missing(&paths.ca_key))?;
    Ok(KeyFiles {
        secrets_key,
        ca_cert_pem,
        ca_key_pem,
    })
}

/// Fails if any key file is already there (a restore never replaces one).
pub fn refuse_existing(paths: &KeyPaths) -> Result<(), KeyError> {
    for p in [&paths.secrets_key, &paths.ca_key, &paths.ca_cert] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    Ok(())
}

/// Writes restored key files (keys 0600, certificate 0644), each only if absent. On failure
/// the files written so far are removed again.
pub fn install(paths: &KeyPaths, files: &KeyFiles) -> Result<(), KeyError> {
    let plan: [(&Path, &[u8], u32); 3] = [
        (&paths.secrets_key, &files.secrets_key, 0o600),
        (&paths.ca_key, files.ca_key_pem.as_bytes(), 0o600),
        (&paths.ca_cert, files.ca_cert_pem.as_bytes(), 0o644),
    ];
    let mut written: Vec<&Path> = Vec::new();
    for (path, bytes, mode) in plan {
        let result = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write_new_file(path, bytes, mode));
        if let Err(e) = result {
            for w in written {
                let _ = std::fs::remove_file(w);
            }
            return Err(io_err(path)(e));
        }
        written.push(path);
    }
    Ok(())
}

/// A passphrase from a file: at most `MAX_PASSPHRASE_FILE` bytes, one trailing newline
/// dropped (editors add one).
pub fn read_passphrase(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSPHRASE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE {
        return Err(KeyError::Passphrase(format!(
            "{} is larger than {MAX_PASSPHRASE_FILE} bytes; it should hold only the passphrase",
            path.display()
        )));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}
