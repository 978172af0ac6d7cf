//! The inventory as the campaign domain reads it: devices as plan `Candidate`s (and their
//! labels for window checks), windows as a `Calendar`. Read straight from the store's
//! in-memory indexes and records, no gRPC.

use std::collections::HashMap;

use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::window::Schedule;
use prost::Message;

use crate::campaign::Labels;
use crate::campaign::calendar::{Calendar, HORIZON_SECONDS};
use crate::campaign::plan::{Candidate, HealthLevel, Topology};
use crate::inventory::Inventory;
use crate::model::{ApiError, kind_id};
use crate::store::ListQuery;

/// Health reason codes that mean a disk is predicted to fail.
const PREDICTED_DISK_CODES: [&str; 3] = [
    "smart.predicted_failure",
    "smart.failed",
    "disk.predicted_failure",
];

fn list_all(inv: &Inventory, kind: ResourceKind) -> Result<Vec<pb::Resource>, ApiError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = inv
            .store()
            .list(&ListQuery {
                kind: kind_id(kind),
                labels: Default::default(),
                fields: Default::default(),
                after_id: after.clone(),
                limit: 5000,
            })
            .map_err(crate::inventory::store_error)?;
        let n = page.objects.len();
        for o in page.objects {
            after = Some(o.id.clone());
            let r = pb::Resource::decode(o.body.as_slice())
                .map_err(|e| ApiError::Internal(format!("corrupt stored resource: {e}")))?;
            out.push(r);
        }
        if n < 5000 {
            break;
        }
    }
    Ok(out)
}

/// Every device as a plan candidate, and every device's labels by name.
/// Health and last report come from the observer, the engine's one view of hosts.
pub fn candidates(
    inv: &Inventory,
    observer: &dyn super::observe::Observer,
) -> Result<(Vec<Candidate>, HashMap<String, Labels>), ApiError> {
    let none = super::observe::Expectations::default();
    let mut out = Vec::new();
    let mut labels = HashMap::new();
    for r in list_all(inv, ResourceKind::Device)? {
        let Some(R::Device(d)) = r.resource else {
            continue;
        };
        let meta = d.meta.clone().unwrap_or_default();
        let l: Labels = meta.labels.into_iter().collect();
        let seen = observer.observe(&meta.name, &none)?.unwrap_or_default();
        let reasons: Vec<String> = seen.health_reasons.iter().cloned().collect();
        let last_report =
            (seen.report_nanos > 0).then(|| seen.report_nanos.div_euclid(1_000_000_000));
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        out.push(Candidate {
            name: meta.name.clone(),
            topology: Topology {
                rack: nonempty(&d.rack).or_else(|| l.get("rack").cloned()),
                switch: l.get("switch").cloned(),
                role: nonempty(&d.role).or_else(|| l.get("role").cloned()),
            },
            parent: nonempty(&d.parent),
            health: HealthLevel::from_pb(seen.health),
            predicted_disk_failure: reasons
                .iter()
                .any(|c| PREDICTED_DISK_CODES.contains(&c.as_str())),
            health_reasons: reasons,
            last_report,
            labels: l.clone(),
        });
        labels.insert(meta.name, l);
    }
    Ok((out, labels))
}

/// Every window and freeze laid out from `now` over the horizon plus `extra` seconds.
pub fn calendar(inv: &Inventory, now: i64, extra: i64) -> Result<Calendar, ApiError> {
    let mut schedules = Vec::new();
    for r in list_all(inv, ResourceKind::Window)? {
        if let Some(R::Window(w)) = r.resource {
            // A window that no longer parses is left out (it was validated when written).
            if let Ok(s) = Schedule::parse(&w) {
                schedules.push(s);
            }
        }
    }
    Ok(Calendar::new(
        &schedules,
        now,
        now + HORIZON_SECONDS + extra.max(0) + 24 * 3600,
    ))
}

/// Every device's labels by name (for window checks while running).
pub fn candidates_labels(inv: &Inventory) -> Result<((), HashMap<String, Labels>), ApiError> {
    let mut labels = HashMap::new();
    for r in list_all(inv, ResourceKind::Device)? {
        if let Some(R::Device(d)) = r.resource {
            let meta = d.meta.unwrap_or_default();
            labels.insert(meta.name, meta.labels.into_iter().collect());
        }
    }
    Ok(((), labels))
}
