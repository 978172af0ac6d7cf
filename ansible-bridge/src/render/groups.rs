//! The groups a device belongs to, named as Ansible sanitizes group names.

use muster::pb;

use super::hostvars::{health_name, kind_name, lifecycle_name};

/// Ansible's rule for group names (`ansible.inventory.group.to_safe_group_name`): every
/// character outside `[A-Za-z0-9_]` becomes `_`.
pub fn safe_group_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The groups of one device, as (prefix, value) pairs; the name is
/// `safe_group_name(prefix + value)`. Building names per host would allocate some 400,000
/// strings for 10,000 hosts with 30 labels: `GroupIndex` names each distinct pair once.
pub(super) fn group_keys<'a>(
    d: &'a pb::Device,
    in_window: bool,
    out: &mut Vec<(&'static str, &'a str, &'a str)>,
) {
    out.clear();
    let (health, drift) = d
        .status
        .as_ref()
        .map_or((0, false), |st| (st.health, !st.drift.is_empty()));
    out.push(("kind_", kind_name(d.kind), ""));
    out.push(("lifecycle_", lifecycle_name(d.lifecycle), ""));
    out.push(("health_", health_name(health), ""));
    out.push(("drift_", if drift { "yes" } else { "no" }, ""));
    for (prefix, value) in [("site_", &d.site), ("rack_", &d.rack), ("role_", &d.role)] {
        if !value.is_empty() {
            out.push((prefix, value.as_str(), ""));
        }
    }
    if let Some(m) = &d.meta {
        for (k, v) in &m.labels {
            out.push(("label_", k.as_str(), v.as_str()));
        }
    }
    if in_window {
        out.push(("in_window", "", ""));
    }
}

pub(super) fn group_name(prefix: &str, a: &str, b: &str) -> String {
    if b.is_empty() {
        safe_group_name(&format!("{prefix}{a}"))
    } else {
        safe_group_name(&format!("{prefix}{a}_{b}"))
    }
}

/// The groups one device belongs to (sanitized names).
pub fn groups_of(d: &pb::Device, in_window: bool) -> Vec<String> {
    let mut keys = Vec::new();
    group_keys(d, in_window, &mut keys);
    keys.iter().map(|(p, a, b)| group_name(p, a, b)).collect()
}
