//! VMs a hypervisor reports: VM devices the inventory lacks are created (labelled
//! discovered, for an operator to adopt; at most `max_discovered_vms` per hypervisor, see
//! `vm_discovery`), the ones it no longer reports are labelled vanished, and the label goes
//! when they come back. Matched by UUID, kept in the device's `serial`.

use std::collections::BTreeMap;

use muster::pb::{self, resource::Resource as R};

use super::{Agents, DISCOVERED_LABEL, VANISHED_LABEL, agent_principal};
use crate::inventory::ChangeContext;
use crate::model::ApiError;
use crate::store::{self, Mutation};
use crate::vm_discovery;

impl Agents {
    /// Links a hypervisor's VMs: creates VM devices it reports that the inventory lacks
    /// (labelled discovered, for an operator to adopt), marks the ones it no longer reports
    /// as vanished, and clears that mark when they come back. VMs are matched by UUID, kept in
    /// the device's `serial`.
    pub(super) async fn reconcile_vms(
        &self,
        host: &str,
        vms: &[pb::VirtualMachine],
    ) -> Result<(), ApiError> {
        let principal = agent_principal(host);
        let ctx = ChangeContext {
            origin: "agent".into(),
            reason: format!("VM inventory reported by hypervisor {host}"),
            ticket: String::new(),
        };
        let children = self.inventory.devices_with_parent(host)?;
        let mut by_uuid: BTreeMap<String, (crate::store::StoredObject, pb::Resource)> = children
            .into_iter()
            .filter_map(|(o, r)| match r.resource.as_ref() {
                Some(R::Device(d)) if !d.serial.is_empty() => {
                    Some((d.serial.to_lowercase(), (o, r)))
                }
                _ => None,
            })
            .collect();
        let now = self.inventory.now_unix_nanos();
        // Room left under the cap; VMs past it are not created (prepare_report put the
        // health reason on the hypervisor).
        let mut room = self.settings.max_discovered_vms.saturating_sub(
            by_uuid
                .values()
                .filter(|(_, r)| vm_discovery::is_discovered(r))
                .count(),
        );
        for vm in vms {
            let uuid = vm.uuid.to_lowercase();
            if let Some((obj, r)) = by_uuid.remove(&uuid) {
                if r.meta()
                    .is_some_and(|m| m.labels.contains_key(VANISHED_LABEL))
                {
                    let mut r = r.clone();
                    if let Some(m) = r.meta_mut() {
                        m.labels.remove(VANISHED_LABEL);
                    }
                    let m = self.inventory.server_mutation(
                        &obj,
                        r,
                        &principal,
                        "vm-returned",
                        &ctx,
                        now,
                    );
                    self.commit_mutation(m, &vm.name).await?;
                }
                continue;
            }
            if room == 0 {
                continue;
            }
            let name = vm_device_name(&vm.name, &uuid);
            if self.inventory.load_device(&name)?.is_some() {
                tracing::info!(vm = %vm.name, host, "a device with this VM's name exists with another parent; not linking");
                continue;
            }
            let mut labels = std::collections::HashMap::new();
            labels.insert(DISCOVERED_LABEL.to_string(), "true".to_string());
            let r = pb::Resource {
                resource: Some(R::Device(pb::Device {
                    meta: Some(pb::ObjectMeta {
                        name: name.clone(),
                        labels,
                        ..Default::default()
                    }),
                    kind: pb::DeviceKind::Vm as i32,
                    serial: uuid.clone(),
                    parent: host.to_string(),
                    lifecycle: pb::Lifecycle::Active as i32,
                    ..Default::default()
                })),
            };
            let m = self
                .inventory
                .server_create(r, &principal, "vm-discovered", &ctx, now)?;
            match self.commit_mutation(m, &name).await {
                Ok(()) => room -= 1,
                Err(e) => {
                    tracing::warn!(vm = %name, error = %e, "could not create a discovered VM")
                }
            }
        }
        for (_, (obj, r)) in by_uuid {
            if r.meta()
                .is_some_and(|m| m.labels.contains_key(VANISHED_LABEL))
            {
                continue;
            }
            let mut r = r.clone();
            if let Some(m) = r.meta_mut() {
                m.labels
                    .insert(VANISHED_LABEL.to_string(), "true".to_string());
            }
            let name = r.name().to_string();
            let m = self
                .inventory
                .server_mutation(&obj, r, &principal, "vm-vanished", &ctx, now);
            self.commit_mutation(m, &name).await?;
        }
        Ok(())
    }

    async fn commit_mutation(&self, m: Mutation, name: &str) -> Result<(), ApiError> {
        let rev = self
            .store
            .commit(m)
            .revision()
            .await
            .map_err(|e| crate::store_map::api_error("device", name, e))?;
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(|e| crate::store_map::api_error("device", name, e))
    }
}

/// A device name for a discovered VM: its libvirt name when that is a valid name, else one
/// derived from its UUID.
fn vm_device_name(name: &str, uuid: &str) -> String {
    let lower = name.to_lowercase();
    if muster::names::validate_name("name", &lower).is_ok() {
        lower
    } else {
        format!("vm-{uuid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_device_names() {
        assert_eq!(vm_device_name("Web-01", "u1"), "web-01");
        assert_eq!(vm_device_name("", "6f1c"), "vm-6f1c");
        assert_eq!(vm_device_name("bad name/with slash", "6f1c"), "vm-6f1c");
    }
}
