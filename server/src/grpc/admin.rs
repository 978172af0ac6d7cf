//! AdminService handlers: online backup (optionally carrying the keys, encrypted), WhoAmI, and
//! token management (in `tokens.rs`).

use std::io::Write;
use std::pin::Pin;

use futures::Stream;
use muster::pb::{self, ResourceKind, admin_service_server::AdminService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Shared;
use super::status::to_status;
use crate::inventory::{ChangeContext, store_error};
use crate::keys::bundle;
use crate::model::{ApiError, Permission};

/// Size of the chunks a backup is streamed in.
const CHUNK: usize = 1024 * 1024;

/// gRPC face of server administration.
#[derive(Debug, Clone)]
pub struct AdminApi(pub Shared);

/// A backup request, checked at the edge: an empty passphrase (no keys carried) or one of an
/// acceptable length. No `Debug`: the passphrase must not reach a log.
pub struct BackupInput {
    pub passphrase: Vec<u8>,
}

impl TryFrom<pb::BackupRequest> for BackupInput {
    type Error = ApiError;
    fn try_from(r: pb::BackupRequest) -> Result<Self, ApiError> {
        if !r.passphrase.is_empty() {
            bundle::check_passphrase(&r.passphrase)
                .map_err(|problem| ApiError::invalid("passphrase", problem))?;
        }
        Ok(Self {
            passphrase: r.passphrase,
        })
    }
}

/// Sends what is written to it as backup chunks.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(pb::BackupChunk { data }))
            .map_err(|_| std::io::Error::other("client went away"))
    }
}

/// Writes a consistent snapshot of the store, carrying `bundle`, to a new file at `path`.
fn snapshot_to(
    store: &dyn crate::store::Store,
    bundle: &[u8],
    path: &std::path::Path,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    store.backup(bundle, &mut w).map_err(|e| e.to_string())?;
    w.flush().map_err(|e| e.to_string())
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let who = self.0.authorize(
            &req,
            Permission::Admin,
            "backup",
            ResourceKind::Unspecified,
            "",
        )?;
        let BackupInput { passphrase } = self.0.input(
            &who,
            "backup",
            (ResourceKind::Unspecified, ""),
            req.into_inner(),
        )?;
        // A backup copies every record, and with a passphrase the keys too: who took one is
        // part of the trail.
        let what = if passphrase.is_empty() {
            "backup without keys"
        } else {
            "backup with the keys, sealed with a passphrase"
        };
        self.0.inventory.record_accepted_action(
            &who.name,
            "backup",
            (ResourceKind::Unspecified, ""),
            &ChangeContext::default(),
            what,
        );
        if passphrase.is_empty() {
            tracing::warn!(
                "backup without a passphrase: it carries no keys; a restore needs secrets.key and agent-ca.* copied by hand"
            );
        }
        let (tx, rx) = mpsc::channel(4);
        let store = std::sync::Arc::clone(self.0.inventory.store());
        let keys = std::sync::Arc::clone(&self.0.keys);
        tokio::task::spawn_blocking(move || {
            // Snapshot to a local file first: the store's writer is held only for as long as the
            // local disk takes, never for as long as a slow client takes to read.
            let path =
                std::env::temp_dir().join(format!("muster-backup-{}.tmp", ulid::Ulid::new()));
            let sealed = if passphrase.is_empty() {
                Ok(Vec::new())
            } else {
                bundle::seal(&keys, &passphrase).map_err(|e| e.to_string())
            };
            let result = sealed
                .and_then(|b| snapshot_to(&*store, &b, &path))
                .and_then(|_| {
                    let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    let mut w = ChunkWriter {
                        tx: tx.clone(),
                        buf: Vec::with_capacity(CHUNK),
                    };
                    std::io::copy(&mut file, &mut w).map_err(|e| e.to_string())?;
                    w.flush().map_err(|e| e.to_string())
                });
            let _ = std::fs::remove_file(&path);
            match result {
                Ok(()) => tracing::info!("backup streamed"),
                Err(e) => {
                    let status = to_status(ApiError::Unavailable(format!("backup failed: {e}")));
                    let _ = tx.blocking_send(Err(status));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.0.authorize(
            &req,
            Permission::Read,
            "whoami",
            ResourceKind::Unspecified,
            "",
        )?;
        Ok(Response::new(pb::WhoAmIResponse {
            principal: who.name,
            role: who.role.to_string(),
            revision: crate::store::durable_revision(&**self.0.inventory.store())
                .map_err(|e| to_status(store_error(e)))?,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        super::tokens::create(&self.0, req).await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        super::tokens::list(&self.0, req).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        super::tokens::revoke(&self.0, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_passphrase_is_empty_or_of_an_acceptable_length() {
        let none = BackupInput::try_from(pb::BackupRequest::default()).unwrap();
        assert!(none.passphrase.is_empty(), "no passphrase: no keys carried");
        let ok = BackupInput::try_from(pb::BackupRequest {
            passphrase: b"correct horse battery".to_vec(),
        })
        .unwrap();
        assert_eq!(ok.passphrase, b"correct horse battery");
        for bad in [b"short".to_vec(), vec![b'x'; bundle::MAX_PASSPHRASE + 1]] {
            match BackupInput::try_from(pb::BackupRequest { passphrase: bad }) {
                Err(ApiError::InvalidArgument { field, .. }) => assert_eq!(field, "passphrase"),
                Err(other) => panic!("not an invalid argument: {other:?}"),
                Ok(_) => panic!("a passphrase of the wrong length was accepted"),
            }
        }
    }
}
