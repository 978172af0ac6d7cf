//! Bearer-token authentication: token hashes from the config file and from the store, and the
//! first-start bootstrap of an admin token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::TokenConfig;
use crate::keys::files::write_private_file;
use muster::selector::Selector;

use muster::clock::SharedClock;

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

/// Where a token was defined: config-file tokens are listed but only the config removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    Store,
}

/// One accepted token: who it authenticates as, and its lifecycle.
#[derive(Debug)]
pub struct TokenEntry {
    pub hash: String,
    pub principal: Principal,
    pub source: TokenSource,
    pub bootstrap: bool,
    /// The scope as written (empty: unscoped).
    pub selector: String,
    pub created_nanos: i64,
    /// 0: never expires.
    pub expires_nanos: i64,
    pub created_by: String,
    /// Updated in memory on each use; written to the store at most once a minute.
    pub last_used_nanos: AtomicI64,
    /// The value last written to the store.
    pub persisted_last_used_nanos: AtomicI64,
}

impl TokenEntry {
    /// Whether the token has expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        self.expires_nanos != 0 && now >= self.expires_nanos
    }

    /// The store record for this entry, with the current last-used time.
    pub fn record(&self) -> StoredToken {
        StoredToken {
            hash: self.hash.clone(),
            name: self.principal.name.clone(),
            role: self.principal.role.to_string(),
            selector: self.selector.clone(),
            created_nanos: self.created_nanos,
            expires_nanos: self.expires_nanos,
            created_by: self.created_by.clone(),
            last_used_nanos: self.last_used_nanos.load(Ordering::Relaxed),
            bootstrap: self.bootstrap,
        }
    }

    /// An entry for a stored token, or why its record is unusable.
    pub fn from_stored(t: StoredToken) -> Result<Self, AuthSetupError> {
        let bad = |problem: String| AuthSetupError::BadToken {
            name: t.name.clone(),
            problem,
        };
        let role: Role = t.role.parse().map_err(bad)?;
        let scope = if t.selector.is_empty() {
            None
        } else {
            Some(Selector::parse(&t.selector).map_err(|e| bad(e.to_string()))?)
        };
        Ok(Self {
            principal: Principal {
                name: t.name.clone(),
                role,
                scope,
            },
            source: TokenSource::Store,
            bootstrap: t.bootstrap,
            selector: t.selector,
            created_nanos: t.created_nanos,
            expires_nanos: t.expires_nanos,
            created_by: t.created_by,
            last_used_nanos: AtomicI64::new(t.last_used_nanos),
            persisted_last_used_nanos: AtomicI64::new(t.last_used_nanos),
            hash: t.hash,
        })
    }
}

/// The tokens the server accepts, by hash. Live: token management changes it, and a
/// revocation takes effect on the next request.
#[derive(Debug)]
pub struct TokenRegistry {
    pub(crate) by_hash: RwLock<HashMap<String, Arc<TokenEntry>>>,
    /// Serialises token management (create/revoke/persisting last use) so that name
    /// uniqueness and "another admin remains" hold across the store write.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Expiry and last-use times are read from it.
    pub(crate) clock: SharedClock,
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
    pub async fn load(
        config: &[TokenConfig],
        store: &dyn Store,
        data_dir: &Path,
        clock: SharedClock,
    ) -> Result<(Self, Option<PathBuf>), AuthSetupError> {
        let mut by_hash: HashMap<String, Arc<TokenEntry>> = HashMap::new();
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
                hash.clone(),
                Arc::new(TokenEntry {
                    hash,
                    principal: Principal::new(t.name.clone(), role),
                    source: TokenSource::Config,
                    bootstrap: false,
                    selector: String::new(),
                    created_nanos: 0,
                    expires_nanos: 0,
                    created_by: String::new(),
                    last_used_nanos: AtomicI64::new(0),
                    persisted_last_used_nanos: AtomicI64::new(0),
                }),
            );
        }
        for t in store.tokens()? {
            let e = TokenEntry::from_stored(t)?;
            by_hash.insert(e.hash.clone(), Arc::new(e));
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
            let rec = StoredToken {
                hash: hash_token(&token),
                name: "admin".into(),
                role: "admin".into(),
                created_nanos: clock.now_unix_nanos(),
                created_by: "musterd (first start)".into(),
                bootstrap: true,
                ..StoredToken::default()
            };
            // With its audit entry, in one durable batch: who can administer the server.
            let audit = crate::inventory::Inventory::accepted_action_record(
                "musterd",
                "token-create",
                (muster::pb::ResourceKind::Unspecified, "admin"),
                &crate::inventory::ChangeContext::default(),
                &format!(
                    "created the bootstrap admin token at first start (written to {})",
                    path.display()
                ),
                clock.now_unix_nanos(),
            );
            let w = crate::store::TokenWrite {
                put: vec![rec.clone()],
                delete: Vec::new(),
                audit: Some(audit),
            };
            crate::store::commit_tokens_durably(store, w).await?;
            let e = TokenEntry::from_stored(rec)?;
            by_hash.insert(e.hash.clone(), Arc::new(e));
            created = Some(path);
        }
        Ok((
            Self {
                by_hash: RwLock::new(by_hash),
                admin: tokio::sync::Mutex::new(()),
                clock,
            },
            created,
        ))
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
        let Some(entry) = self.entry(&hash) else {
            return Err((
                format!("unknown-token:{}", &hash[..8]),
                ApiError::Unauthenticated("invalid or revoked token".into()),
            ));
        };
        let now = self.clock.now_unix_nanos();
        if entry.expired(now) {
            return Err((
                entry.principal.name.clone(),
                ApiError::Unauthenticated(format!(
                    "token {} expired at {}; ask an admin for a new one (muster token create)",
                    entry.principal.name,
                    rfc3339(entry.expires_nanos)
                )),
            ));
        }
        entry.last_used_nanos.store(now, Ordering::Relaxed);
        Ok(entry.principal.clone())
    }

    /// The entry for a token hash.
    fn entry(&self, hash: &str) -> Option<Arc<TokenEntry>> {
        self.by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(hash)
            .cloned()
    }

    /// Every entry, by name.
    pub fn entries(&self) -> Vec<Arc<TokenEntry>> {
        let mut v: Vec<_> = self
            .by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.principal.name.cmp(&b.principal.name));
        v
    }
}

/// RFC 3339 (seconds) of a Unix-nanosecond time.
pub fn rfc3339(nanos: i64) -> String {
    let secs = u64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}
