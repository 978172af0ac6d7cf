//! Bearer-token authentication: token hashes from the config file and from the store, and the
//! first-start bootstrap of an admin token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
use crate::keys::files::write_private_file;
use crate::model::{ApiError, Principal, Role};
use crate::store::{Store, StoreError, StoredToken};

/// Name of the bootstrap token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Hex SHA-256 of a token. Tokens carry 256 random bits, so a fast hash is enough: there is
/// nothing to brute-force, and the hash only keeps the secret out of config files and backups.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `mst_` followed by 43 URL-safe base64 characters.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("mst_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The tokens the server accepts, by hash.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    by_hash: HashMap<String, Principal>,
}

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("token {name:?}: {problem}")]
    BadToken { name: String, problem: String },
    #[error("cannot write the admin token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenRegistry {
    /// Loads tokens from the config and the store. When there are none at all, creates an admin
    /// token, stores its hash and writes the token to `data_dir/admin.token` (mode 0600);
    /// returns that path so the caller can log it (never the token).
    pub fn load(
        config: &[TokenConfig],
        store: &dyn Store,
        data_dir: &Path,
    ) -> Result<(Self, Option<PathBuf>), AuthSetupError> {
        let mut by_hash = HashMap::new();
        for t in config {
            let role: Role = t.role.parse().map_err(|problem| AuthSetupError::BadToken {
                name: t.name.clone(),
                problem,
            })?;
            let hash = t.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(AuthSetupError::BadToken {
                    name: t.name.clone(),
                    problem: "sha256 must be 64 hex digits (musterd hash-token prints it)".into(),
                });
            }
            by_hash.insert(
                hash,
                Principal {
                    name: t.name.clone(),
                    role,
                },
            );
        }
        for t in store.tokens()? {
            let role = t.role.parse().map_err(|problem| AuthSetupError::BadToken {
                name: t.name.clone(),
                problem,
            })?;
            by_hash.insert(t.hash, Principal { name: t.name, role });
        }
        let mut created = None;
        if by_hash.is_empty() {
            let token = generate_token();
            let path = data_dir.join(ADMIN_TOKEN_FILE);
            // A stale file from a wiped store would hold a token that no longer works.
            let _ = std::fs::remove_file(&path);
            write_private_file(&path, format!("{token}\n").as_bytes()).map_err(|source| {
                AuthSetupError::TokenFile {
                    path: path.clone(),
                    source,
                }
            })?;
            let hash = hash_token(&token);
            store.put_token(StoredToken {
                hash: hash.clone(),
                name: "admin".into(),
                role: "admin".into(),
            })?;
            by_hash.insert(
                hash,
                Principal {
                    name: "admin".into(),
                    role: Role::Admin,
                },
            );
            created = Some(path);
        }
        Ok((Self { by_hash }, created))
    }

    /// The principal for an `authorization` header value, or why there is none. The error
    /// message never repeats the token.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, (String, ApiError)> {
        let Some(value) = header else {
            return Err((
                "anonymous".into(),
                ApiError::Unauthenticated(
                    "missing bearer token: pass --token or set MUSTER_TOKEN".into(),
                ),
            ));
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err((
                "anonymous".into(),
                ApiError::Unauthenticated("authorization must be \"Bearer <token>\"".into()),
            ));
        };
        let hash = hash_token(token.trim());
        match self.by_hash.get(&hash) {
            Some(p) => Ok(p.clone()),
            None => Err((
                format!("unknown-token:{}", &hash[..8]),
                ApiError::Unauthenticated("invalid or revoked token".into()),
            )),
        }
    }
}
