//! The campaign layer of desired state as stored: one auxiliary record per (device,
//! campaign) under `aux_keys::CAMPAIGN_OVERLAY`, written by the campaign engine in the batch
//! of the host transition that causes it (a host leaving PENDING puts it; ROLLED_BACK, the
//! campaign's abort or completion removes it), removed with the device by its delete, and
//! read here when the drift engine loads. Pure encoding; the engine learns of later changes
//! through `Event::Overlay`.

use std::collections::{BTreeMap, HashMap};

use muster::pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::desired::Overlay;
use crate::aux_keys::{self, CAMPAIGN_OVERLAY};
use crate::model::ApiError;
use crate::store::Store;

#[derive(Serialize, Deserialize)]
enum OverlayRecord {
    /// `desired`: the campaign's `pb::DesiredState`, protobuf-encoded.
    V1 {
        campaign: String,
        since_nanos: i64,
        desired: Vec<u8>,
    },
}

/// Key of device `device_id`'s layer from campaign `campaign_id`.
pub fn key(device_id: &str, campaign_id: &str) -> Vec<u8> {
    aux_keys::key(CAMPAIGN_OVERLAY, &format!("{device_id}/{campaign_id}"))
}

/// Prefix of every layer of one device (what its delete removes).
pub fn device_prefix(device_id: &str) -> Vec<u8> {
    aux_keys::key(CAMPAIGN_OVERLAY, &format!("{device_id}/"))
}

/// The stored form of a campaign's layer.
pub fn encode(
    campaign: &str,
    since_nanos: i64,
    desired: &pb::DesiredState,
) -> Result<Vec<u8>, ApiError> {
    postcard::to_stdvec(&OverlayRecord::V1 {
        campaign: campaign.to_string(),
        since_nanos,
        desired: desired.encode_to_vec(),
    })
    .map_err(|e| ApiError::Internal(format!("encoding a campaign layer: {e}")))
}

fn decode(raw: &[u8]) -> Option<Overlay> {
    match postcard::from_bytes::<OverlayRecord>(raw).ok()? {
        OverlayRecord::V1 {
            campaign,
            since_nanos,
            desired,
        } => {
            let spec = pb::DesiredState::decode(desired.as_slice()).ok()?;
            Some(Overlay::new(&campaign, since_nanos, &spec))
        }
    }
}

/// Every stored layer: device id → campaign id → layer. A record that does not decode is
/// logged and left out (it cannot say what it wanted).
pub fn load(store: &dyn Store) -> Result<HashMap<String, BTreeMap<String, Overlay>>, ApiError> {
    let mut out: HashMap<String, BTreeMap<String, Overlay>> = HashMap::new();
    let records = store
        .aux_scan(CAMPAIGN_OVERLAY.as_bytes())
        .map_err(super::store_err)?;
    for (k, v) in records {
        let rest = &k[CAMPAIGN_OVERLAY.len().min(k.len())..];
        let parsed = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_once('/'))
            .zip(decode(&v));
        match parsed {
            Some(((device, campaign), o)) => {
                out.entry(device.to_string())
                    .or_default()
                    .insert(campaign.to_string(), o);
            }
            None => {
                tracing::error!(key = %String::from_utf8_lossy(&k), "unreadable campaign layer left out of desired state")
            }
        }
    }
    Ok(out)
}
