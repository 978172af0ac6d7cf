//! The optional export cache: the last export for one (server, selector), stored as one
//! protobuf message. The server is still asked every run, with the cached version: when
//! nothing changed it answers with a header alone and the devices come from here. A cache that
//! cannot be read or written is ignored (it only saves work, never changes an answer).

use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::client::Export;

/// One cache file.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
}

impl Cache {
    /// The cache file for `server` and `selector` in `dir`.
    pub fn new(dir: &Path, server: &str, selector: &str) -> Self {
        let mut h = Sha256::new();
        h.update(server.trim().as_bytes());
        h.update([0]);
        h.update(selector.trim().as_bytes());
        let key = hex::encode(&h.finalize()[..16]);
        Self {
            path: dir.join(format!("muster-inventory-{key}.pb")),
        }
    }

    /// The cached export, if there is a readable one.
    pub fn read(&self) -> Option<Export> {
        let bytes = std::fs::read(&self.path).ok()?;
        Export::decode(bytes.as_slice()).ok()
    }

    /// Replaces the cached export (written beside it, then renamed: readers never see half).
    pub fn write(&self, e: &Export) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, e.encode_to_vec()).is_ok()
            && std::fs::rename(&tmp, &self.path).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
