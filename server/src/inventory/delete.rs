//! Delete: refused while other objects still refer to the resource. A device takes its
//! auxiliary records with it (observed facts, report metadata, drift memory, enrollment) in
//! the same store batch as the delete, so no engine has to clean up after it and a device
//! created again under the name starts clean.

use muster::pb::ResourceKind;

use super::{ChangeContext, DeleteInput, Inventory, WRITE_RETRIES, internal, object_error};
use crate::model::resource;
use crate::model::{ApiError, Principal, kind_id, kind_name};
use crate::store::{self, AuxWrite, Check, Expect, Mutation, StoredObject};

impl Inventory {
    /// Deletes a resource; refused while other objects still refer to it.
    pub async fn delete(&self, who: &Principal, input: DeleteInput) -> Result<u64, ApiError> {
        let DeleteInput {
            kind,
            name,
            expected_revision: expected,
            context: ctx,
        } = input;
        let result = self.delete_checked(who, kind, &name, expected, &ctx).await;
        self.audit_refusal(who, "delete", kind, &name, &ctx, result)
    }

    async fn delete_checked(
        &self,
        who: &Principal,
        kind: ResourceKind,
        name: &str,
        expected: u64,
        ctx: &ChangeContext,
    ) -> Result<u64, ApiError> {
        ctx.validate()?;
        crate::scope::check_kind(who, kind)?;
        let mut attempt = 0;
        loop {
            let Some((old_obj, old)) = self.load(kind, name)? else {
                return Err(ApiError::NotFound {
                    kind: kind_name(kind),
                    name: name.to_string(),
                });
            };
            crate::scope::check(who, &old)?;
            if expected != 0 && old_obj.revision != expected {
                return Err(ApiError::Conflict {
                    kind: kind_name(kind),
                    name: name.into(),
                    expected,
                    current: old_obj.revision,
                });
            }
            let checks = resource::referrers(kind)
                .iter()
                .map(|(rk, field)| Check::NotReferenced {
                    kind: kind_id(*rk),
                    field: field.to_string(),
                    value: name.to_string(),
                })
                .collect();
            let m = Mutation {
                kind: kind_id(kind),
                name: name.to_string(),
                expect: Expect::Revision(old_obj.revision),
                put: None,
                checks,
                change: Self::change_meta(who, "delete", ctx, self.now_unix_nanos()),
            };
            let r = if kind == ResourceKind::Device {
                self.commit_device_delete(&old_obj, m).await
            } else {
                self.commit(kind, name, m).await
            };
            match r {
                Err(ApiError::Conflict { .. }) if expected == 0 && attempt < WRITE_RETRIES => {
                    attempt += 1
                }
                // A report or enrollment step wrote the device's records meanwhile: the
                // caller's revision still holds, so read them again.
                Err(ApiError::Aborted(_)) if attempt < WRITE_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    /// Commits a device's delete together with the removal of its auxiliary records
    /// (`aux_keys::device_records`), and waits until it is durable.
    async fn commit_device_delete(&self, old: &StoredObject, m: Mutation) -> Result<u64, ApiError> {
        let kind = ResourceKind::Device;
        let records = crate::aux_keys::device_records(&*self.store, &old.name, &old.id)
            .map_err(|e| object_error(kind, &old.name, e))?;
        let w = AuxWrite {
            guards: records.guards,
            puts: records.keys.into_iter().map(|k| (k, None)).collect(),
            mutation: Some(m),
        };
        let applied = store::commit_aux_durably(&*self.store, w)
            .await
            .map_err(|e| object_error(kind, &old.name, e))?;
        let rev = applied
            .revision
            .ok_or_else(|| internal("a delete was applied without a revision"))?;
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(|e| object_error(kind, &old.name, e))?;
        Ok(rev)
    }
}
