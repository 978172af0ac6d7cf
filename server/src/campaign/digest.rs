//! The approval digest: SHA-256 over the canonical spec and the frozen plan. Canonical = the
//! proto3 JSON form (pbjson: default values left out, enum names) re-serialized through
//! `serde_json::Value`, whose objects are key-sorted maps, so map order (HashMap fields such
//! as `desired.sysctl`) and field order cannot change the digest. Any edit of the spec or any
//! re-plan changes it, which is what drops approvals.

use muster::pb;
use sha2::{Digest, Sha256};

use super::error::CampaignError;
use super::plan::Plan;

/// Domain separation: a digest of something else can never equal a campaign digest.
const DOMAIN: &[u8] = b"muster.v1.campaign-approval\0";

/// Canonical JSON of a proto message.
pub fn canonical<T: serde::Serialize>(m: &T) -> Result<String, CampaignError> {
    let v = serde_json::to_value(m).map_err(|e| CampaignError::invalid("spec", e.to_string()))?;
    serde_json::to_string(&v).map_err(|e| CampaignError::invalid("spec", e.to_string()))
}

/// Hex SHA-256 of `spec ‖ plan` in canonical form.
pub fn digest(spec: &pb::CampaignSpec, plan: &Plan) -> Result<String, CampaignError> {
    let s = canonical(spec)?;
    let p = canonical(&plan.to_pb())?;
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
    h.update(p.as_bytes());
    Ok(hex::encode(h.finalize()))
}
