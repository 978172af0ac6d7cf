//! Bulk export for external automation (the Ansible bridge): every selected device with what a
//! dynamic inventory needs, streamed in chunks, plus the windows, in one call.
//!
//! The header's `version` lets a client cache the export: it covers the store revision (every
//! body write: labels, endpoints, health, drift) and the facts hash of every device (facts are
//! auxiliary records and change without a revision). A client that presents the current
//! version gets the header alone.

use std::collections::HashMap;

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::inventory::{Inventory, ListParams, store_error};
use crate::model::ApiError;
use crate::observed::{self, ReportMeta};

/// Devices per streamed chunk: large enough to amortise framing, small enough to keep each
/// message far below the 4 MB default limit even with many labels per device.
pub const CHUNK_DEVICES: u32 = 500;

/// What the caller asked for, validated.
#[derive(Debug, Clone)]
pub struct ExportParams {
    pub selector: String,
    pub if_none_match: String,
}

impl ExportParams {
    /// Checks the selector now, so a bad one is an immediate `INVALID_ARGUMENT`, not a stream
    /// that fails after its header.
    pub fn new(selector: String, if_none_match: String) -> Result<Self, ApiError> {
        Selector::parse(&selector).map_err(|e| ApiError::invalid("selector", e.to_string()))?;
        Ok(Self {
            selector,
            if_none_match,
        })
    }
}

/// The store revision and the version token covering it and every device's facts hash.
fn version(inv: &Inventory) -> Result<(u64, String, HashMap<String, ReportMeta>), ApiError> {
    let store = inv.store();
    let revision = store.revision();
    let prefix = observed::META_PREFIX.as_bytes();
    let mut h = Sha256::new();
    h.update(revision.to_be_bytes());
    let mut metas = HashMap::new();
    for (k, v) in store.aux_scan(prefix).map_err(store_error)? {
        let meta = ReportMeta::decode(&v)?;
        h.update(&k);
        h.update(meta.facts_hash.as_bytes());
        let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        metas.insert(id, meta);
    }
    Ok((revision, hex::encode(&h.finalize()[..16]), metas))
}

/// Streams the export into `tx` until done or the receiver is gone (the client went away).
pub async fn run(
    inv: &Inventory,
    p: ExportParams,
    tx: mpsc::Sender<Result<pb::ExportChunk, ApiError>>,
) {
    if let Err(e) = produce(inv, &p, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn produce(
    inv: &Inventory,
    p: &ExportParams,
    tx: &mpsc::Sender<Result<pb::ExportChunk, ApiError>>,
) -> Result<(), ApiError> {
    let (revision, version, metas) = version(inv)?;
    let not_modified = !p.if_none_match.is_empty() && p.if_none_match == version;
    let mut chunk = pb::ExportChunk {
        header: Some(pb::ExportHeader {
            revision,
            version,
            not_modified,
        }),
        ..Default::default()
    };
    if not_modified {
        let _ = tx.send(Ok(chunk)).await;
        return Ok(());
    }
    chunk.windows = all_windows(inv).await?;
    let mut token = String::new();
    loop {
        let (page, next, _) = inv
            .list(&ListParams {
                kind: ResourceKind::Device,
                selector: p.selector.clone(),
                field_selector: String::new(),
                page_size: CHUNK_DEVICES,
                page_token: token,
            })
            .await?;
        for r in page {
            let Some(R::Device(d)) = r.resource else {
                continue;
            };
            let id = d.meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default();
            // Only devices with stored facts have an OS section worth a read.
            let os = if metas.contains_key(id) {
                observed::load_section(&**inv.store(), id, muster::facts::Section::Os)?.os
            } else {
                None
            };
            chunk.devices.push(pb::ExportDevice {
                device: Some(d),
                os,
            });
        }
        if tx.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
            return Ok(());
        }
        if next.is_empty() {
            return Ok(());
        }
        token = next;
    }
}

async fn all_windows(inv: &Inventory) -> Result<Vec<pb::Window>, ApiError> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next, _) = inv
            .list(&ListParams {
                kind: ResourceKind::Window,
                selector: String::new(),
                field_selector: String::new(),
                page_size: 1000,
                page_token: token,
            })
            .await?;
        out.extend(page.into_iter().filter_map(|r| match r.resource {
            Some(R::Window(w)) => Some(w),
            _ => None,
        }));
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}
