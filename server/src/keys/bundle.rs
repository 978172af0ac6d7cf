//! The secrets bundle a backup carries: the secrets key and the agent CA, encrypted with a key
//! derived from an operator's passphrase (Argon2id, then ChaCha20-Poly1305). Pure: no I/O.
//!
//! Layout: `MUSTER-KEYS 1\n`, Argon2 memory (KiB), passes and lanes (`u32` each, big-endian),
//! a 16-byte salt and a 12-byte nonce (together the header, authenticated as associated data),
//! then the ciphertext of three `u32 length, bytes` frames: secrets key, CA certificate, CA key.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use thiserror::Error;

use super::KeyFiles;

const MAGIC: &[u8] = b"MUSTER-KEYS 1\n";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = MAGIC.len() + 12 + SALT_LEN + NONCE_LEN;

/// Shortest passphrase accepted: the bundle can be attacked offline by whoever holds the file.
pub const MIN_PASSPHRASE: usize = 12;
/// Longest passphrase accepted.
pub const MAX_PASSPHRASE: usize = 1024;
/// Argon2id cost written into new bundles (OWASP's first recommendation: 19 MiB, 2 passes).
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
/// Costs above these in a bundle being opened are refused: a hostile file must not make a
/// restore allocate gigabytes or spin for hours.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_PASSES: u32 = 16;
const MAX_LANES: u32 = 8;

/// Why a bundle could not be made or opened.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error(
        "the keys in this backup cannot be decrypted: wrong passphrase, or the backup is damaged"
    )]
    WrongPassphrase,
    #[error("the keys bundle in this backup is malformed: {0}")]
    Malformed(String),
}

/// Checks a passphrase's length against `MIN_PASSPHRASE`..=`MAX_PASSPHRASE` bytes.
pub fn check_passphrase(p: &[u8]) -> Result<(), String> {
    if p.len() < MIN_PASSPHRASE {
        return Err(format!(
            "must be at least {MIN_PASSPHRASE} bytes long (got {})",
            p.len()
        ));
    }
    if p.len() > MAX_PASSPHRASE {
        return Err(format!(
            "must be at most {MAX_PASSPHRASE} bytes long (got {})",
            p.len()
        ));
    }
    Ok(())
}

fn derive(passphrase: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<Key, BundleError> {
    let params = Params::new(m, t, p, Some(32))
        .map_err(|e| BundleError::Malformed(format!("key derivation parameters: {e}")))?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut key)
        .map_err(|e| BundleError::Malformed(format!("key derivation: {e}")))?;
    Ok(Key::from(key))
}

fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encrypts the key files under `passphrase`.
pub fn seal(files: &KeyFiles, passphrase: &[u8]) -> Result<Vec<u8>, BundleError> {
    check_passphrase(passphrase).map_err(BundleError::Passphrase)?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut salt);
    rand::rng().fill_bytes(&mut nonce);
    let mut out = MAGIC.to_vec();
    for v in [MEMORY_KIB, PASSES, LANES] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = derive(passphrase, &salt, MEMORY_KIB, PASSES, LANES)?;
    let mut plain = Vec::new();
    put_frame(&mut plain, &files.secrets_key);
    put_frame(&mut plain, files.ca_cert_pem.as_bytes());
    put_frame(&mut plain, files.ca_key_pem.as_bytes());
    let sealed = ChaCha20Poly1305::new(&key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &out,
            },
        )
        .map_err(|_| BundleError::Malformed("encryption failed".into()))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut n = [0u8; 4];
    n.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(n)
}

/// Splits the next `u32 length, bytes` frame off `rest`.
fn take_frame<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], BundleError> {
    let short = || BundleError::Malformed(format!("{what} is truncated"));
    let (len, tail) = rest.split_at_checked(4).ok_or_else(short)?;
    let n = u32_at(len, 0) as usize;
    let (frame, tail) = tail.split_at_checked(n).ok_or_else(short)?;
    *rest = tail;
    Ok(frame)
}

/// Decrypts a bundle; a wrong passphrase and a tampered bundle are the same error.
pub fn open(bundle: &[u8], passphrase: &[u8]) -> Result<KeyFiles, BundleError> {
    if bundle.len() < HEADER_LEN || !bundle.starts_with(MAGIC) {
        return Err(BundleError::Malformed("bad header".into()));
    }
    let (header, sealed) = bundle.split_at(HEADER_LEN);
    let at = MAGIC.len();
    let (m, t, p) = (
        u32_at(header, at),
        u32_at(header, at + 4),
        u32_at(header, at + 8),
    );
    if m > MAX_MEMORY_KIB || t > MAX_PASSES || p > MAX_LANES {
        return Err(BundleError::Malformed(format!(
            "key derivation cost m={m} KiB t={t} p={p} exceeds the limits (m<={MAX_MEMORY_KIB}, t<={MAX_PASSES}, p<={MAX_LANES})"
        )));
    }
    let salt = &header[at + 12..at + 12 + SALT_LEN];
    let nonce = &header[at + 12 + SALT_LEN..];
    let key = derive(passphrase, salt, m, t, p)?;
    let plain = ChaCha20Poly1305::new(&key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: header,
            },
        )
        .map_err(|_| BundleError::WrongPassphrase)?;
    let mut rest = plain.as_slice();
    let secrets_key = take_frame(&mut rest, "secrets key")?
        .try_into()
        .map_err(|_| BundleError::Malformed("the secrets key is not 32 bytes".into()))?;
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec())
            .map_err(|_| BundleError::Malformed(format!("{what} is not PEM")))
    };
    let ca_cert_pem = text(take_frame(&mut rest, "CA certificate")?, "CA certificate")?;
    let ca_key_pem = text(take_frame(&mut rest, "CA key")?, "CA key")?;
    if !rest.is_empty() {
        return Err(BundleError::Malformed("trailing bytes".into()));
    }
    Ok(KeyFiles {
        secrets_key,
        ca_cert_pem,
        ca_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> KeyFiles {
        KeyFiles {
            secrets_key: [7; 32],
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            ca_key_pem: "-----BEGIN PRIVATE KEY-----\n".into(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let sealed = seal(&files(), b"correct horse battery").unwrap();
        assert!(!sealed.windows(32).any(|w| w == [7; 32]));
        let back = open(&sealed, b"correct horse battery").unwrap();
        assert_eq!(back.secrets_key, [7; 32]);
        assert_eq!(back.ca_key_pem, files().ca_key_pem);
        assert!(matches!(
            open(&sealed, b"wrong horse battery"),
            Err(BundleError::WrongPassphrase)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            open(&tampered, b"correct horse battery"),
            Err(BundleError::WrongPassphrase)
        ));
        // The cost parameters are authenticated and bounded before any work is done.
        let mut costly = sealed.clone();
        costly[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            open(&costly, b"correct horse battery"),
            Err(BundleError::Malformed(_))
        ));
        assert!(matches!(
            seal(&files(), b"short"),
            Err(BundleError::Passphrase(_))
        ));
        assert!(check_passphrase(&[b'x'; MAX_PASSPHRASE + 1]).is_err());
    }
}
