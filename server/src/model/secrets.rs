//! Encryption of credential secrets at rest.
//!
//! Secrets are sealed with ChaCha20-Poly1305 under a 32-byte key. Pure: the key file itself
//! (where it lives, creating it, refusing to replace it) is `crate::keys`.

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
    /// A box with the given key (loaded by `crate::keys`).
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
