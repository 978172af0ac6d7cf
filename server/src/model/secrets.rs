//! Encryption of credential secrets at rest.
//!
//! Secrets are sealed with ChaCha20-Poly1305 under a 32-byte key kept in a file the server owns
//! (mode 0600, created on first start). A backup of the store holds only sealed secrets: keep
//! the key file with it, or the credentials must be written again after a restore.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// Seals and opens secrets; also derives their keyed fingerprints.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
    key: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Loads the key from `path`, creating it (0600) when absent.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let key: [u8; 32] = match std::fs::read(path) {
            Ok(bytes) => bytes.try_into().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} must hold exactly 32 bytes", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private_file(path, &key)?;
                key
            }
            Err(e) => return Err(e),
        };
        Ok(Self::from_key(key))
    }

    /// A box with the given key (tests, benchmarks).
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            key,
        }
    }

    /// Nonce followed by ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext, or None if the data was not sealed with this key.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        self.cipher.decrypt(Nonce::from_slice(nonce), body).ok()
    }

    /// A keyed fingerprint: tells operators whether a secret changed without letting anyone
    /// who reads it guess a weak password offline.
    pub fn fingerprint(&self, plain: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(plain);
        hex::encode(&h.finalize()[..12])
    }
}

/// Writes a new file readable only by its owner.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_fingerprint() {
        let b = SecretBox::from_key([7; 32]);
        let s = b.seal(b"hunter2");
        assert_ne!(&s[NONCE_LEN..], b"hunter2");
        assert_eq!(b.open(&s).unwrap(), b"hunter2");
        assert!(SecretBox::from_key([8; 32]).open(&s).is_none());
        assert_eq!(b.fingerprint(b"x"), b.fingerprint(b"x"));
        assert_ne!(
            b.fingerprint(b"x"),
            SecretBox::from_key([8; 32]).fingerprint(b"x")
        );
    }
}
