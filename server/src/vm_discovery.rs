//! The per-hypervisor cap on discovered VM devices: one agent certificate must not be able to
//! create devices (and event-log entries) without bound. `plan` and `reason` are pure (the
//! caller passes the hypervisor's current children and the VMs it reported).

use std::collections::HashSet;

use muster::pb::{self, Health, resource::Resource as R};

use crate::agents::DISCOVERED_LABEL;
use crate::inventory::Inventory;
use crate::model::ApiError;

/// Health reason code on a hypervisor some of whose VMs were not created.
pub const CAPPED_CODE: &str = "vm.discovery_capped";

/// What linking a hypervisor's VMs would do under the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Discovered VM devices the hypervisor already has.
    pub discovered: usize,
    /// Reported VMs (distinct UUIDs) that no child device matches.
    pub new: usize,
    /// How many of the new ones the cap leaves out.
    pub refused: usize,
}

/// Whether a child device was created by discovery (and so counts against the cap).
pub fn is_discovered(r: &pb::Resource) -> bool {
    r.meta()
        .is_some_and(|m| m.labels.contains_key(DISCOVERED_LABEL))
}

/// Counts, for `vms` reported by a hypervisor with `children`, how many would be created
/// and how many the cap refuses.
pub fn plan(children: &[pb::Resource], vms: &[pb::VirtualMachine], cap: usize) -> Plan {
    let known: HashSet<String> = children
        .iter()
        .filter_map(|r| match r.resource.as_ref() {
            Some(R::Device(d)) if !d.serial.is_empty() => Some(d.serial.to_lowercase()),
            _ => None,
        })
        .collect();
    let discovered = children.iter().filter(|r| is_discovered(r)).count();
    let new: HashSet<String> = vms
        .iter()
        .map(|v| v.uuid.to_lowercase())
        .filter(|u| !known.contains(u))
        .collect();
    let room = cap.saturating_sub(discovered);
    Plan {
        discovered,
        new: new.len(),
        refused: new.len().saturating_sub(room),
    }
}

/// The WARNING a capped hypervisor carries: names the cap and how many VMs were left out.
pub fn reason(plan: &Plan, cap: usize) -> Option<pb::HealthReason> {
    (plan.refused > 0).then(|| pb::HealthReason {
        severity: Health::Warning as i32,
        code: CAPPED_CODE.into(),
        source: "libvirt".into(),
        message: format!(
            "{} of {} newly reported VMs not created as devices: this hypervisor has {} \
             discovered VM devices and the limit is {cap} (max_discovered_vms_per_hypervisor); \
             adopt or delete discovered VMs, or raise the limit",
            plan.refused, plan.new, plan.discovered
        ),
    })
}

/// The cap's verdict for a report from hypervisor `host`: decided from the VMs it lists; a
/// delta that leaves them out (unchanged) keeps the previous verdict, from `previous` reasons.
pub fn verdict(
    inventory: &Inventory,
    host: &str,
    vms: Option<&[pb::VirtualMachine]>,
    full: bool,
    previous: &[pb::HealthReason],
    cap: usize,
) -> Result<Option<pb::HealthReason>, ApiError> {
    Ok(match vms {
        Some(vms) => {
            let children: Vec<pb::Resource> = inventory
                .devices_with_parent(host)?
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            reason(&plan(&children, vms, cap), cap)
        }
        None if !full => previous.iter().find(|r| r.code == CAPPED_CODE).cloned(),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(uuid: &str) -> pb::VirtualMachine {
        pb::VirtualMachine {
            uuid: uuid.into(),
            ..Default::default()
        }
    }

    fn child(uuid: &str, discovered: bool) -> pb::Resource {
        let mut labels = std::collections::HashMap::new();
        if discovered {
            labels.insert(DISCOVERED_LABEL.to_string(), "true".to_string());
        }
        pb::Resource {
            resource: Some(R::Device(pb::Device {
                meta: Some(pb::ObjectMeta {
                    name: uuid.into(),
                    labels,
                    ..Default::default()
                }),
                serial: uuid.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn the_cap_counts_discovered_children_and_distinct_new_uuids() {
        let children = [child("a", true), child("b", false)];
        let vms = [vm("A"), vm("b"), vm("c"), vm("c"), vm("d"), vm("e")];
        let p = plan(&children, &vms, 2);
        assert_eq!(
            p,
            Plan {
                discovered: 1,
                new: 3,
                refused: 2
            }
        );
        let r = reason(&p, 2).map(|r| r.message).unwrap_or_default();
        assert!(
            r.starts_with("2 of 3 newly") && r.contains("limit is 2"),
            "{r}"
        );
        assert_eq!(plan(&children, &vms, 10).refused, 0);
        assert!(reason(&plan(&children, &vms, 10), 10).is_none());
    }
}
