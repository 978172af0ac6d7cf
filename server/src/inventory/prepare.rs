//! The one preparation of a write: operator input validated and defaulted, merged over the
//! stored version (server-owned parts carried, secrets sealed), scope-checked before and
//! after, compared, and turned into the mutation that does it. Create, update, apply and
//! change sets (`planning`) all go through these steps; only committing differs.

use muster::pb::{self, ResourceKind, resource::Resource as R};

use super::{ApplyAction, ChangeContext, Inventory};
use crate::model::resource;
use crate::model::{ApiError, Principal, kind_name, timestamp};
use crate::store::{Expect, Mutation, StoredObject};

/// One resource of a change set, prepared: what will happen to it and the write that does it.
#[derive(Debug, Clone)]
pub struct PreparedWrite {
    pub kind: ResourceKind,
    pub name: String,
    pub action: ApplyAction,
    /// The resource as it will be stored (for `Unchanged`, as it is stored).
    pub resource: pb::Resource,
    /// None when nothing changes.
    pub mutation: Option<Mutation>,
    /// Revision of the stored version it was prepared against (0: none stored).
    pub base_revision: u64,
}

impl Inventory {
    /// Prepares operator input: kind, defaults, server-owned parts cleared, validation.
    pub(super) fn prepare(r: &mut pb::Resource) -> Result<ResourceKind, ApiError> {
        let kind = resource::kind_of(r).ok_or_else(resource::no_variant)?;
        resource::clear_server_owned(r);
        resource::apply_defaults(r);
        resource::validate(r)?;
        Ok(kind)
    }

    /// `prepare`, plus the checks that read other objects but not the object itself.
    pub(super) fn prepare_input(&self, r: &mut pb::Resource) -> Result<ResourceKind, ApiError> {
        let kind = Self::prepare(r)?;
        self.check_rack_site(r)?;
        Ok(kind)
    }

    /// A device's rack must be in the device's site.
    fn check_rack_site(&self, r: &pb::Resource) -> Result<(), ApiError> {
        let Some(R::Device(d)) = r.resource.as_ref() else {
            return Ok(());
        };
        if d.rack.is_empty() {
            return Ok(());
        }
        if let Some((_, rack)) = self.load(ResourceKind::Rack, &d.rack)?
            && let Some(R::Rack(rack)) = rack.resource
            && rack.site != d.site
        {
            return Err(ApiError::invalid(
                "rack",
                format!(
                    "rack {:?} is in site {:?}, not {:?}",
                    d.rack, rack.site, d.site
                ),
            ));
        }
        Ok(())
    }

    /// A new object from prepared input: secret sealed, id and creation metadata set.
    pub(super) fn new_object(
        &self,
        who: &Principal,
        mut r: pb::Resource,
        now: i64,
    ) -> Result<pb::Resource, ApiError> {
        self.seal_secret(&mut r, None)?;
        if let Some(m) = r.meta_mut() {
            m.id = ulid::Ulid::new().to_string();
            m.revision = 0;
            m.created_at = Some(timestamp(now));
            m.created_by = who.name.clone();
            m.updated_at = Some(timestamp(now));
            m.updated_by = who.name.clone();
        }
        Ok(r)
    }

    /// Merges operator input over the stored version; returns the new stored form.
    fn merged(
        &self,
        who: &Principal,
        old: &pb::Resource,
        mut new: pb::Resource,
        now: i64,
    ) -> Result<pb::Resource, ApiError> {
        resource::carry_server_owned(old, &mut new);
        self.seal_secret(&mut new, Some(old))?;
        if let Some(m) = new.meta_mut() {
            m.updated_at = Some(timestamp(now));
            m.updated_by = who.name.clone();
        }
        Ok(new)
    }

    /// `merged`, then the scope checks before and after: a scoped token can neither reach nor
    /// move an object out of its scope.
    pub(super) fn merge_checked(
        &self,
        who: &Principal,
        old: &pb::Resource,
        new: pb::Resource,
        now: i64,
    ) -> Result<pb::Resource, ApiError> {
        let new = self.merged(who, old, new, now)?;
        crate::scope::check(who, old)?;
        crate::scope::check_write(self, who, &new)?;
        Ok(new)
    }

    /// Validates one resource of a change set and works out its write, without writing.
    pub(crate) fn prepare_write(
        &self,
        who: &Principal,
        mut r: pb::Resource,
        ctx: &ChangeContext,
        now: i64,
    ) -> Result<PreparedWrite, ApiError> {
        let kind = self.prepare_input(&mut r)?;
        let current = self.load(kind, r.name())?;
        self.prepare_against(who, kind, r, current, ctx, now)
    }

    /// Works out the apply of prepared input `r` over `current` (the stored version, if any):
    /// created, updated or unchanged, and the mutation (verb "apply") that does it.
    pub(super) fn prepare_against(
        &self,
        who: &Principal,
        kind: ResourceKind,
        mut r: pb::Resource,
        current: Option<(StoredObject, pb::Resource)>,
        ctx: &ChangeContext,
        now: i64,
    ) -> Result<PreparedWrite, ApiError> {
        let name = r.name().to_string();
        let Some((old_obj, old)) = current else {
            crate::scope::check_write(self, who, &r)?;
            let r = self.new_object(who, r, now)?;
            let m = self.write_mutation(
                kind,
                &r,
                Expect::Absent,
                Self::change_meta(who, "apply", ctx, now),
            );
            return Ok(PreparedWrite {
                kind,
                name,
                action: ApplyAction::Created,
                resource: r,
                mutation: Some(m),
                base_revision: 0,
            });
        };
        // Re-sending the stored secret is not a change (sealing it again would only pick a
        // new nonce).
        if let Some(R::Credential(c)) = r.resource.as_mut()
            && !c.secret.is_empty()
            && self.secret_matches(&old, &c.secret)
        {
            c.secret.clear();
        }
        let new = self.merge_checked(who, &old, r, now)?;
        if resource::comparable(&new) == resource::comparable(&old) {
            return Ok(PreparedWrite {
                kind,
                name,
                action: ApplyAction::Unchanged,
                resource: old,
                mutation: None,
                base_revision: old_obj.revision,
            });
        }
        let expect = Expect::Revision(old_obj.revision);
        let m = self.write_mutation(
            kind,
            &new,
            expect,
            Self::change_meta(who, "apply", ctx, now),
        );
        Ok(PreparedWrite {
            kind,
            name,
            action: ApplyAction::Updated,
            resource: new,
            mutation: Some(m),
            base_revision: old_obj.revision,
        })
    }

    /// Read-only reference check, for dry runs (a real write checks in the store's batch).
    pub(super) fn check_references(&self, r: &pb::Resource) -> Result<(), ApiError> {
        for (k, n) in resource::references(r) {
            if self.load(k, &n)?.is_none() {
                return Err(ApiError::FailedPrecondition(format!(
                    "{} {:?} refers to {} {n:?}, which does not exist",
                    kind_name(resource::kind_of(r).unwrap_or_default()),
                    r.name(),
                    kind_name(k)
                )));
            }
        }
        Ok(())
    }
}
