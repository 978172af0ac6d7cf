//! The hostvars of one device, serialized straight from the export, every string marked
//! [`Unsafe`] so Ansible never templates it.

use muster::pb;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A string Ansible must never template: serialized as `{"__ansible_unsafe": "..."}`, which
/// ansible-core's inventory JSON decoder (script plugin, `_meta.hostvars`) turns into an
/// untrusted string (2.19's data tagging: not `TrustedAsTemplate`; before 2.19:
/// `AnsibleUnsafeText`), and which the `muster.fleet.muster` plugin unwraps with `wrap_var`.
#[derive(Debug, Clone, Copy)]
pub struct Unsafe<'a>(pub &'a str);

impl Serialize for Unsafe<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("__ansible_unsafe", self.0)?;
        m.end()
    }
}

pub(super) fn kind_name(k: i32) -> &'static str {
    use pb::DeviceKind as K;
    match K::try_from(k) {
        Ok(K::Server) => "server",
        Ok(K::Storage) => "storage",
        Ok(K::Switch) => "switch",
        Ok(K::Router) => "router",
        Ok(K::Firewall) => "firewall",
        Ok(K::Pdu) => "pdu",
        Ok(K::Vm) => "vm",
        Ok(K::Unspecified) | Err(_) => "unspecified",
    }
}

pub(super) fn lifecycle_name(l: i32) -> &'static str {
    use pb::Lifecycle as L;
    match L::try_from(l) {
        Ok(L::Planned) => "planned",
        Ok(L::Provisioning) => "provisioning",
        Ok(L::Active) => "active",
        Ok(L::Maintenance) => "maintenance",
        Ok(L::Decommissioned) => "decommissioned",
        Ok(L::Unspecified) | Err(_) => "unspecified",
    }
}

/// A device that never reported has no health: it is `unknown` like a silent one.
pub(super) fn health_name(h: i32) -> &'static str {
    use pb::Health as H;
    match H::try_from(h) {
        Ok(H::Ok) => "ok",
        Ok(H::Warning) => "warning",
        Ok(H::Critical) => "critical",
        Ok(H::Unknown | H::Unspecified) | Err(_) => "unknown",
    }
}

/// The hostvars of one device, serialized straight from the export (no intermediate JSON
/// tree: at 10,000 hosts that tree cost more than everything else together):
///
/// - `ansible_host`, `ansible_port`, `ansible_user` from the device's SSH endpoint
///   (`ansible_host` falls back to the management address; the port defaults to 22);
/// - `muster_id`, `muster_kind`, `muster_site`, `muster_rack`, `muster_role`,
///   `muster_lifecycle`, `muster_health`, `muster_serial`, `muster_asset_tag`, `muster_vendor`,
///   `muster_model`, `muster_parent`, `muster_management_address`, `muster_labels` (a map),
///   `muster_drift_count`, `muster_os_release`, `muster_kernel`, `muster_facts_origin`
///   (`agent`, `ansible`, or empty when no facts were ever stored), `muster_revision`;
/// - `muster_in_window` (bool) when windows were evaluated.
///
/// Every string value is marked [`Unsafe`], label values included.
#[derive(Debug, Clone, Copy)]
pub struct HostVars<'a> {
    pub device: &'a pb::Device,
    pub os: Option<&'a pb::OsFacts>,
    pub in_window: Option<bool>,
}

/// A device's labels as a map sorted by key, values marked [`Unsafe`].
struct Labels<'a>(&'a std::collections::HashMap<String, String>);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<(&String, &String)> = self.0.iter().collect();
        sorted.sort_unstable();
        let mut m = s.serialize_map(Some(sorted.len()))?;
        for (k, v) in sorted {
            m.serialize_entry(k, &Unsafe(v))?;
        }
        m.end()
    }
}

impl Serialize for HostVars<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let dev = self.device;
        let empty_meta = pb::ObjectMeta::default();
        let meta = dev.meta.as_ref().unwrap_or(&empty_meta);
        let (health, drift, origin) = dev.status.as_ref().map_or((0, 0, ""), |st| {
            (st.health, st.drift.len(), st.origin.as_str())
        });
        let (ssh_host, ssh_port, ssh_user) = dev
            .ssh
            .as_ref()
            .map_or(("", 0, ""), |e| (e.host.as_str(), e.port, e.user.as_str()));
        let host = if ssh_host.is_empty() {
            dev.management_address.as_str()
        } else {
            ssh_host
        };
        let (release, kernel) = self
            .os
            .map_or(("", ""), |o| (o.release.as_str(), o.kernel.as_str()));
        let mut m = s.serialize_map(None)?;
        if !host.is_empty() {
            m.serialize_entry("ansible_host", &Unsafe(host))?;
            m.serialize_entry("ansible_port", &if ssh_port == 0 { 22 } else { ssh_port })?;
        }
        if !ssh_user.is_empty() {
            m.serialize_entry("ansible_user", &Unsafe(ssh_user))?;
        }
        m.serialize_entry("muster_id", &Unsafe(&meta.id))?;
        m.serialize_entry("muster_kind", &Unsafe(kind_name(dev.kind)))?;
        m.serialize_entry("muster_site", &Unsafe(&dev.site))?;
        m.serialize_entry("muster_rack", &Unsafe(&dev.rack))?;
        m.serialize_entry("muster_role", &Unsafe(&dev.role))?;
        m.serialize_entry("muster_lifecycle", &Unsafe(lifecycle_name(dev.lifecycle)))?;
        m.serialize_entry("muster_health", &Unsafe(health_name(health)))?;
        m.serialize_entry("muster_serial", &Unsafe(&dev.serial))?;
        m.serialize_entry("muster_asset_tag", &Unsafe(&dev.asset_tag))?;
        m.serialize_entry("muster_vendor", &Unsafe(&dev.vendor))?;
        m.serialize_entry("muster_model", &Unsafe(&dev.model))?;
        m.serialize_entry("muster_parent", &Unsafe(&dev.parent))?;
        m.serialize_entry(
            "muster_management_address",
            &Unsafe(&dev.management_address),
        )?;
        m.serialize_entry("muster_labels", &Labels(&meta.labels))?;
        m.serialize_entry("muster_drift_count", &drift)?;
        m.serialize_entry("muster_os_release", &Unsafe(release))?;
        m.serialize_entry("muster_kernel", &Unsafe(kernel))?;
        m.serialize_entry("muster_facts_origin", &Unsafe(origin))?;
        m.serialize_entry("muster_revision", &meta.revision)?;
        if let Some(w) = self.in_window {
            m.serialize_entry("muster_in_window", &w)?;
        }
        m.end()
    }
}
