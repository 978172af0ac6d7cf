//! Which fields of a resource are indexed (for field selectors), what it refers to, and what
//! may refer to it.

use std::collections::BTreeMap;

use muster::pb::{self, ResourceKind, resource::Resource as R};

/// Field names a field selector may use for a kind ("name" always works).
pub fn indexed_fields(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Rack => &["site"],
        ResourceKind::Device => &[
            "kind",
            "site",
            "rack",
            "role",
            "lifecycle",
            "serial",
            "asset_tag",
            "parent",
            "health",
            "bmc_credential",
            "ssh_credential",
        ],
        ResourceKind::Window => &["freeze"],
        ResourceKind::Credential => &["kind"],
        _ => &[],
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> String {
    E::try_from(v)
        .map(|e| name(&e))
        .unwrap_or_default()
        .to_string()
}

/// The values of the indexed fields of a resource (empty values are not indexed).
pub fn index_fields(r: &pb::Resource) -> BTreeMap<String, String> {
    let mut f: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            f.insert(k.to_string(), v);
        }
    };
    match r.resource.as_ref() {
        Some(R::Rack(x)) => put("site", x.site.clone()),
        Some(R::Device(d)) => {
            put("kind", enum_name(d.kind, pb::DeviceKind::as_str_name));
            put(
                "lifecycle",
                enum_name(d.lifecycle, pb::Lifecycle::as_str_name),
            );
            put("site", d.site.clone());
            put("rack", d.rack.clone());
            put("role", d.role.clone());
            put("serial", d.serial.clone());
            put("asset_tag", d.asset_tag.clone());
            put("parent", d.parent.clone());
            put(
                "health",
                d.status
                    .as_ref()
                    .filter(|s| s.health != 0)
                    .map(|s| enum_name(s.health, pb::Health::as_str_name))
                    .unwrap_or_default(),
            );
            put(
                "bmc_credential",
                d.bmc
                    .as_ref()
                    .map(|b| b.credential_ref.clone())
                    .unwrap_or_default(),
            );
            put(
                "ssh_credential",
                d.ssh
                    .as_ref()
                    .map(|s| s.credential_ref.clone())
                    .unwrap_or_default(),
            );
        }
        Some(R::Window(w)) => put("freeze", w.freeze.to_string()),
        Some(R::Credential(c)) => put("kind", enum_name(c.kind, pb::CredentialKind::as_str_name)),
        _ => {}
    }
    f
}

/// Objects a resource refers to, which must exist when it is written.
pub fn references(r: &pb::Resource) -> Vec<(ResourceKind, String)> {
    let mut out = Vec::new();
    let mut add = |k: ResourceKind, n: &str| {
        if !n.is_empty() {
            out.push((k, n.to_string()));
        }
    };
    match r.resource.as_ref() {
        Some(R::Rack(x)) => add(ResourceKind::Site, &x.site),
        Some(R::Device(d)) => {
            add(ResourceKind::Site, &d.site);
            add(ResourceKind::Rack, &d.rack);
            add(ResourceKind::Device, &d.parent);
            if let Some(b) = &d.bmc {
                add(ResourceKind::Credential, &b.credential_ref);
            }
            if let Some(s) = &d.ssh {
                add(ResourceKind::Credential, &s.credential_ref);
            }
        }
        _ => {}
    }
    out
}

/// (kind, indexed field) pairs that may refer to an object of `kind`: it cannot be deleted
/// while any of them does.
pub fn referrers(kind: ResourceKind) -> &'static [(ResourceKind, &'static str)] {
    match kind {
        ResourceKind::Site => &[(ResourceKind::Rack, "site"), (ResourceKind::Device, "site")],
        ResourceKind::Rack => &[(ResourceKind::Device, "rack")],
        ResourceKind::Device => &[(ResourceKind::Device, "parent")],
        ResourceKind::Credential => &[
            (ResourceKind::Device, "bmc_credential"),
            (ResourceKind::Device, "ssh_credential"),
        ],
        _ => &[],
    }
}
