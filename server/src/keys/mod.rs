//! The server's key material: the secrets key (seals credentials) and the agent CA (issued
//! every agent's identity). The store records their fingerprints at first start, and at every
//! start musterd refuses to run when a file the store depends on is missing or different,
//! instead of creating a new one that would silently orphan the data. `bundle` encrypts the
//! files for backups; `files` does the disk I/O.

pub mod bundle;
pub mod files;

use std::path::{Path, PathBuf};

use muster::pb::ResourceKind;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::kind_id;
use crate::model::secrets::SecretBox;
use crate::pki::{AgentCa, PkiError};
use crate::store::{AuxWrite, Store, StoreError, commit_aux_durably};

/// Auxiliary record holding the fingerprints of the key files this store was set up with.
const RECORD_KEY: &[u8] = crate::aux_keys::KEY_FILES.as_bytes();
const RECORD_VERSION: u8 = 1;
/// Prefix of the agent identity records (`agents.rs`): certificates the CA issued.
const IDENTITY_PREFIX: &[u8] = crate::aux_keys::AGENT_IDENTITY.as_bytes();

/// How to restore a missing key file; shared by every refusal.
const HOW_TO_RESTORE: &str = "copy it from the old data directory, or restore the backup \
    with `musterd restore --from BACKUP --data-dir DIR --passphrase-file FILE` (backups made \
    with --passphrase-file carry it). musterd never creates a new one over data that needs the old one";

/// Where the key files live.
#[derive(Debug, Clone)]
pub struct KeyPaths {
    pub secrets_key: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

impl KeyPaths {
    /// The paths a server with `data_dir` (and an optional `secrets_key_file`) uses.
    pub fn new(data_dir: &Path, secrets_key_file: Option<&Path>) -> Self {
        let (ca_cert, ca_key) = AgentCa::files(data_dir);
        Self {
            secrets_key: secrets_key_file
                .map_or_else(|| data_dir.join("secrets.key"), Path::to_path_buf),
            ca_cert,
            ca_key,
        }
    }
}

/// The key files' contents.
#[derive(Clone)]
pub struct KeyFiles {
    pub secrets_key: [u8; 32],
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

impl std::fmt::Debug for KeyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFiles(..)")
    }
}

/// What `open` loaded.
#[derive(Debug)]
pub struct KeyMaterial {
    pub secrets: SecretBox,
    pub ca: AgentCa,
    /// The raw files, for online backups with a passphrase.
    pub files: KeyFiles,
}

/// Why the key material could not be used.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{file} is missing, but this store needs it: {what}. Restore it: {HOW_TO_RESTORE}")]
    Missing { file: PathBuf, what: &'static str },
    #[error(
        "{file} is not the file this store was set up with ({what}). Put the original back: {HOW_TO_RESTORE}"
    )]
    Mismatch { file: PathBuf, what: &'static str },
    #[error(
        "{present} exists but {missing} does not; the CA needs both. Restore it: {HOW_TO_RESTORE}"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("{0} already exists; a restore never replaces a key file")]
    Exists(PathBuf),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Passphrase(String),
    #[error("the key fingerprint record is corrupt")]
    CorruptRecord,
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const SECRETS_WHAT: &str =
    "it seals the credentials stored here, and a new key could not open them";
const CA_WHAT: &str = "it issued the certificates enrolled agents identify with, and a new CA \
    would lock every agent out";

/// Fingerprints of the key files, as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    secrets_key: [u8; 32],
    ca_cert: [u8; 32],
}

impl Record {
    fn of(files: &KeyFiles) -> Self {
        // Domain-separated, so the record is never the keyed fingerprint of any secret.
        let mut h = Sha256::new();
        h.update(b"muster secrets key\0");
        h.update(files.secrets_key);
        let secrets_key = h.finalize().into();
        Self {
            secrets_key,
            ca_cert: Sha256::digest(files.ca_cert_pem.as_bytes()).into(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = vec![RECORD_VERSION];
        v.extend_from_slice(&self.secrets_key);
        v.extend_from_slice(&self.ca_cert);
        v
    }

    fn decode(b: &[u8]) -> Result<Self, KeyError> {
        match b {
            [RECORD_VERSION, rest @ ..] if rest.len() == 64 => {
                let mut r = Self {
                    secrets_key: [0; 32],
                    ca_cert: [0; 32],
                };
                r.secrets_key.copy_from_slice(&rest[..32]);
                r.ca_cert.copy_from_slice(&rest[32..]);
                Ok(r)
            }
            _ => Err(KeyError::CorruptRecord),
        }
    }
}

/// Whether the store holds sealed credentials (a store from before the record existed).
fn has_credentials(store: &dyn Store) -> Result<bool, KeyError> {
    let counts = store.counts()?;
    Ok(counts
        .get(&kind_id(ResourceKind::Credential))
        .is_some_and(|n| *n > 0))
}

/// Whether the store holds agent identities the CA issued.
fn has_identities(store: &dyn Store) -> Result<bool, KeyError> {
    Ok(!store.aux_scan(IDENTITY_PREFIX)?.is_empty())
}

/// Loads the key files, creating them only for a store that needs none yet, checks them
/// against the store's record, and records them if the store has no record yet.
pub async fn open(store: &dyn Store, paths: &KeyPaths) -> Result<KeyMaterial, KeyError> {
    let recorded = store
        .aux_get(RECORD_KEY)?
        .map(|v| Record::decode(&v))
        .transpose()?;
    let secrets_key = match files::read_secrets_key(&paths.secrets_key)? {
        Some(k) => k,
        None if recorded.is_some() || has_credentials(store)? => {
            return Err(KeyError::Missing {
                file: paths.secrets_key.clone(),
                what: SECRETS_WHAT,
            });
        }
        None => files::create_secrets_key(&paths.secrets_key)?,
    };
    let (ca_cert_pem, ca_key_pem) = match files::read_ca(paths)? {
        Some(pair) => pair,
        None if recorded.is_some() || has_identities(store)? => {
            return Err(KeyError::Missing {
                file: paths.ca_key.clone(),
                what: CA_WHAT,
            });
        }
        None => {
            let dir = paths.ca_key.parent().unwrap_or(Path::new("."));
            AgentCa::create(dir)?;
            files::read_ca(paths)?.ok_or_else(|| KeyError::Missing {
                file: paths.ca_key.clone(),
                what: CA_WHAT,
            })?
        }
    };
    let files = KeyFiles {
        secrets_key,
        ca_cert_pem,
        ca_key_pem,
    };
    let current = Record::of(&files);
    match recorded {
        Some(r) if r.secrets_key != current.secrets_key => {
            return Err(KeyError::Mismatch {
                file: paths.secrets_key.clone(),
                what: SECRETS_WHAT,
            });
        }
        Some(r) if r.ca_cert != current.ca_cert => {
            return Err(KeyError::Mismatch {
                file: paths.ca_cert.clone(),
                what: CA_WHAT,
            });
        }
        Some(_) => {}
        None => {
            let w = AuxWrite {
                guards: vec![(RECORD_KEY.to_vec(), None)],
                puts: vec![(RECORD_KEY.to_vec(), Some(current.encode()))],
                mutation: None,
            };
            commit_aux_durably(store, w).await?;
        }
    }
    let ca = AgentCa::from_pem(&files.ca_cert_pem, &files.ca_key_pem)
        .map_err(|e| PkiError::BadCa(paths.ca_key.parent().unwrap_or(Path::new(".")).into(), e))?;
    Ok(KeyMaterial {
        secrets: SecretBox::from_key(files.secrets_key),
        ca,
        files,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{ChangeMeta, Expect, Mutation, SledStore, StoreOptions, StoredObject};

    fn setup() -> (tempfile::TempDir, SledStore, KeyPaths) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), &StoreOptions::default()).unwrap();
        let paths = KeyPaths::new(&dir.path().join("keys"), None);
        (dir, store, paths)
    }

    /// Stores from before the fingerprint record: sealed credentials or agent identities are
    /// enough to refuse creating a new key or CA.
    #[tokio::test]
    async fn a_store_without_a_record_but_with_sealed_data_is_not_given_new_keys() {
        let (_dir, store, paths) = setup();
        let m = Mutation {
            kind: kind_id(ResourceKind::Credential),
            name: "bmc".into(),
            expect: Expect::Absent,
            put: Some(StoredObject {
                kind: kind_id(ResourceKind::Credential),
                id: ulid::Ulid::new().to_string(),
                name: "bmc".into(),
                labels: Default::default(),
                fields: Default::default(),
                revision: 0,
                body: Vec::new(),
            }),
            checks: Vec::new(),
            change: ChangeMeta::default(),
        };
        let rev = store.commit(m).revision().await.unwrap();
        crate::store::wait_durable(&store, rev).await.unwrap();
        let err = open(&store, &paths).await.unwrap_err();
        assert!(matches!(&err, KeyError::Missing { file, .. } if file == &paths.secrets_key));
        assert!(!paths.secrets_key.exists());

        let (_dir, store, paths) = setup();
        let w = AuxWrite {
            guards: Vec::new(),
            puts: vec![(b"ag/id/abc".to_vec(), Some(b"x".to_vec()))],
            mutation: None,
        };
        commit_aux_durably(&store, w).await.unwrap();
        let err = open(&store, &paths).await.unwrap_err();
        assert!(
            matches!(&err, KeyError::Missing { file, .. } if file == &paths.ca_key),
            "{err}"
        );
        assert!(!paths.ca_key.exists() && !paths.ca_cert.exists());
    }

    /// A fresh store gets new files and records them; the next open checks against the record.
    #[tokio::test]
    async fn first_start_records_the_files_and_later_starts_check_them() {
        let (_dir, store, paths) = setup();
        let first = open(&store, &paths).await.unwrap();
        let again = open(&store, &paths).await.unwrap();
        assert_eq!(first.files.secrets_key, again.files.secrets_key);
        std::fs::remove_file(&paths.ca_cert).unwrap();
        let err = open(&store, &paths).await.unwrap_err();
        assert!(matches!(err, KeyError::Incomplete { .. }), "{err}");
        std::fs::remove_file(&paths.ca_key).unwrap();
        let err = open(&store, &paths).await.unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        assert!(!paths.ca_key.exists());
    }
}
