//! Writes the server makes itself (health changes, enrollment annotations, discovered and
//! vanished VMs), and the reads they start from. No scope or operator validation beyond the
//! model's: the callers are the server's own engines.

use muster::pb::{self, ResourceKind};
use muster::selector::Selector;
use prost::Message;

use super::{ChangeContext, Inventory, internal, object_error};
use crate::model::resource;
use crate::model::{ApiError, kind_from_id, kind_id, timestamp};
use crate::store::{Expect, ListQuery, Mutation, StoredObject};

impl Inventory {
    /// A device with its stored form (for server-side writes such as health changes).
    pub(crate) fn load_device(
        &self,
        name: &str,
    ) -> Result<Option<(StoredObject, pb::Resource)>, ApiError> {
        self.load(ResourceKind::Device, name)
    }

    /// Devices whose `parent` is `name` (VMs of a hypervisor, blades of a chassis).
    pub(crate) fn devices_with_parent(
        &self,
        name: &str,
    ) -> Result<Vec<(StoredObject, pb::Resource)>, ApiError> {
        let fields = Selector::parse_fields(&format!("parent={name}"))
            .map_err(|e| ApiError::invalid("parent", e.to_string()))?;
        let page = self
            .store
            .list(&ListQuery {
                kind: kind_id(ResourceKind::Device),
                labels: Selector::default(),
                fields,
                after_id: None,
                limit: 100_000,
            })
            .map_err(|e| object_error(ResourceKind::Device, name, e))?;
        page.objects
            .into_iter()
            .map(|o| {
                let r = pb::Resource::decode(o.body.as_slice()).map_err(internal)?;
                Ok((o, r))
            })
            .collect()
    }

    /// A server-made update of an existing object (health, enrollment annotations, VM
    /// marks): expects the revision it was read at, so a concurrent operator write wins and
    /// the caller re-reads.
    pub(crate) fn server_mutation(
        &self,
        old: &StoredObject,
        mut new: pb::Resource,
        principal: &str,
        verb: &str,
        ctx: &ChangeContext,
        now: i64,
    ) -> Mutation {
        if let Some(m) = new.meta_mut() {
            m.updated_at = Some(timestamp(now));
            m.updated_by = principal.to_string();
        }
        let kind = kind_from_id(old.kind);
        Mutation {
            kind: old.kind,
            name: old.name.clone(),
            expect: Expect::Revision(old.revision),
            put: Some(self.stored(kind, &new)),
            checks: Vec::new(),
            change: Self::server_change_meta(principal, verb, ctx, now),
        }
    }

    /// A server-made creation (a VM its hypervisor reported).
    pub(crate) fn server_create(
        &self,
        mut r: pb::Resource,
        principal: &str,
        verb: &str,
        ctx: &ChangeContext,
        now: i64,
    ) -> Result<Mutation, ApiError> {
        let kind = resource::kind_of(&r).ok_or_else(resource::no_variant)?;
        resource::apply_defaults(&mut r);
        resource::validate(&r)?;
        if let Some(m) = r.meta_mut() {
            m.id = ulid::Ulid::new().to_string();
            m.created_at = Some(timestamp(now));
            m.created_by = principal.to_string();
            m.updated_at = Some(timestamp(now));
            m.updated_by = principal.to_string();
        }
        Ok(Mutation {
            kind: kind_id(kind),
            name: r.name().to_string(),
            expect: Expect::Absent,
            put: Some(self.stored(kind, &r)),
            checks: Self::checks_for(&r),
            change: Self::server_change_meta(principal, verb, ctx, now),
        })
    }
}
