//! `muster admin backup --to FILE [--passphrase-file P]`: stream the server's snapshot (with
//! its keys, encrypted by the server with the passphrase) into a new file.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use muster::pb;
use tokio::io::AsyncWriteExt;

use crate::client::Clients;
use crate::errors::RpcError;

/// Largest passphrase file read (the server accepts at most 1024 bytes).
const MAX_PASSPHRASE_FILE: u64 = 4096;

/// The passphrase in `path`, one trailing newline dropped (editors add one).
fn read_passphrase(path: &Path) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSPHRASE_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE {
        bail!(
            "{} is larger than {MAX_PASSPHRASE_FILE} bytes; it should hold only the passphrase",
            path.display()
        );
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    // On the wire an empty passphrase means "none": the backup would carry no keys.
    if bytes.is_empty() {
        bail!(
            "{} is empty: put the passphrase (12 to 1024 bytes) in it, or leave out --passphrase-file for a backup without keys",
            path.display()
        );
    }
    Ok(bytes)
}

/// Writes the backup; a partial file is removed on failure so it cannot be mistaken for one.
pub async fn backup(clients: &Clients, to: &Path, passphrase_file: Option<&Path>) -> Result<()> {
    let passphrase = passphrase_file.map(read_passphrase).transpose()?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .await
        .with_context(|| format!("cannot create {}", to.display()))?;
    let with_keys = passphrase.is_some();
    match write_backup(clients, file, passphrase.unwrap_or_default()).await {
        Ok(bytes) => {
            eprintln!("backup written to {} ({bytes} bytes)", to.display());
            if with_keys {
                eprintln!("it carries the server's keys, encrypted with the passphrase");
            } else {
                eprintln!(
                    "warning: this backup carries no keys (no --passphrase-file). A server restored from it refuses to start until secrets.key, agent-ca.key and agent-ca.pem are copied from the server's data directory: keep copies of them with the backup"
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(to).await;
            Err(e)
        }
    }
}

async fn write_backup(
    clients: &Clients,
    mut file: tokio::fs::File,
    passphrase: Vec<u8>,
) -> Result<u64> {
    // The deadline bounds the start of the stream, not its (possibly long) transfer.
    let mut stream = clients
        .unary(
            clients
                .admin
                .clone()
                .backup(pb::BackupRequest { passphrase }),
        )
        .await?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(RpcError)? {
        file.write_all(&chunk.data)
            .await
            .context("cannot write backup")?;
        bytes += chunk.data.len() as u64;
    }
    file.flush().await.context("cannot write backup")?;
    file.sync_all()
        .await
        .context("cannot sync backup to disk")?;
    Ok(bytes)
}
