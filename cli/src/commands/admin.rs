//! `muster admin backup --to FILE`: stream the server's snapshot into a new file.

use std::path::Path;

use anyhow::{Context, Result};
use muster::pb;
use tokio::io::AsyncWriteExt;

use crate::client::Clients;
use crate::errors::RpcError;

/// Writes the backup; a partial file is removed on failure so it cannot be mistaken for one.
pub async fn backup(clients: &Clients, to: &Path) -> Result<()> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .with_context(|| format!("cannot create {}", to.display()))?;
    match write_backup(clients, file).await {
        Ok(bytes) => {
            eprintln!("backup written to {} ({bytes} bytes)", to.display());
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(to).await;
            Err(e)
        }
    }
}

async fn write_backup(clients: &Clients, mut file: tokio::fs::File) -> Result<u64> {
    // The deadline bounds the start of the stream, not its (possibly long) transfer.
    let mut stream = clients
        .unary(clients.admin.clone().backup(pb::BackupRequest {}))
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
