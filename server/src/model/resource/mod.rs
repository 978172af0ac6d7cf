//! Per-kind rules: validation, defaults, indexed fields, references, and which parts of a
//! resource the server owns.
//!
//! Split by job: [`validate`] (what a valid resource is), [`index`] (indexed fields,
//! references and referrers); here, the kind, defaults and the server-owned parts.

mod index;
mod validate;

pub use index::{index_fields, indexed_fields, references, referrers};
pub(crate) use validate::validate_spec;
pub use validate::{MAX_SECRET_BYTES, no_variant, validate};

use muster::pb::{self, ResourceKind, resource::Resource as R};

/// The kind of a resource, or None when no variant is set.
pub fn kind_of(r: &pb::Resource) -> Option<ResourceKind> {
    Some(match r.resource.as_ref()? {
        R::Site(_) => ResourceKind::Site,
        R::Rack(_) => ResourceKind::Rack,
        R::Device(_) => ResourceKind::Device,
        R::Profile(_) => ResourceKind::Profile,
        R::Window(_) => ResourceKind::Window,
        R::Credential(_) => ResourceKind::Credential,
        R::Campaign(_) => ResourceKind::Campaign,
    })
}

/// Fills defaults an operator may leave out.
pub fn apply_defaults(r: &mut pb::Resource) {
    match r.resource.as_mut() {
        Some(R::Rack(x)) if x.height_u == 0 => x.height_u = 42,
        Some(R::Device(x)) => {
            if x.lifecycle == pb::Lifecycle::Unspecified as i32 {
                x.lifecycle = pb::Lifecycle::Active as i32;
            }
            if x.height_u == 0 && x.kind != pb::DeviceKind::Vm as i32 {
                x.height_u = 1;
            }
        }
        Some(R::Window(x)) if !x.cron.is_empty() && x.timezone.is_empty() => {
            x.timezone = "UTC".into()
        }
        _ => {}
    }
}

/// Annotations under this prefix are written by the server (agent enrollment state), never
/// taken from operator input, and kept across operator updates.
pub const SERVER_ANNOTATION_PREFIX: &str = "agent.muster.io/";

/// Clears everything the server owns (observed status, campaign progress) from operator input.
pub fn clear_server_owned(r: &mut pb::Resource) {
    if let Some(m) = r.meta_mut() {
        m.annotations
            .retain(|k, _| !k.starts_with(SERVER_ANNOTATION_PREFIX));
    }
    match r.resource.as_mut() {
        Some(R::Device(x)) => x.status = None,
        Some(R::Campaign(x)) => x.status = None,
        Some(R::Credential(x)) => x.fingerprint.clear(),
        _ => {}
    }
}

/// Copies the server-owned parts of `old` into `new` (identity, creation, status).
pub fn carry_server_owned(old: &pb::Resource, new: &mut pb::Resource) {
    if let (Some(om), Some(nm)) = (old.meta().cloned(), new.meta_mut()) {
        nm.id = om.id;
        nm.created_at = om.created_at;
        nm.created_by = om.created_by;
        nm.updated_at = om.updated_at;
        nm.updated_by = om.updated_by;
        nm.revision = om.revision;
        nm.annotations
            .retain(|k, _| !k.starts_with(SERVER_ANNOTATION_PREFIX));
        for (k, v) in om.annotations {
            if k.starts_with(SERVER_ANNOTATION_PREFIX) {
                nm.annotations.insert(k, v);
            }
        }
    }
    match (old.resource.as_ref(), new.resource.as_mut()) {
        (Some(R::Device(o)), Some(R::Device(n))) => n.status = o.status.clone(),
        (Some(R::Campaign(o)), Some(R::Campaign(n))) => n.status = o.status.clone(),
        (Some(R::Credential(o)), Some(R::Credential(n))) => n.fingerprint = o.fingerprint.clone(),
        _ => {}
    }
}
/// A copy without the fields every write changes, to tell whether an apply changes anything.
pub fn comparable(r: &pb::Resource) -> pb::Resource {
    let mut c = r.clone();
    if let Some(m) = c.meta_mut() {
        m.revision = 0;
        m.updated_at = None;
        m.updated_by.clear();
    }
    c
}

#[cfg(test)]
mod tests;
