//! Operator writes: create, update, apply and atomic change sets. Each prepares through
//! `prepare.rs`, commits, waits until durable, and audits its refusal.

use muster::pb::{self, ResourceKind};

use super::{
    ApplyAction, ApplyInput, ChangeContext, CreateInput, Inventory, UpdateInput, WRITE_RETRIES,
    object_error, store_error,
};
use crate::model::resource;
use crate::model::{ApiError, Principal, kind_name};
use crate::store::{self, Expect, Mutation};

impl Inventory {
    /// Everything a create does before it waits: the stored form and its mutation. Kept out
    /// of the async path so that its futures hold no `pb::Resource` (1.9 KB each) across an
    /// await: a 12.5 KB create future was memcpy'd at every layer, ~a quarter of the request
    /// handling time.
    fn create_mutation(
        &self,
        who: &Principal,
        kind: ResourceKind,
        r: pb::Resource,
        ctx: &ChangeContext,
    ) -> Result<(Mutation, Box<pb::Resource>), ApiError> {
        crate::scope::check_write(self, who, &r)?;
        let now = self.now_unix_nanos();
        let r = self.new_object(who, r, now)?;
        let m = self.write_mutation(
            kind,
            &r,
            Expect::Absent,
            Self::change_meta(who, "create", ctx, now),
        );
        Ok((m, Box::new(r)))
    }

    /// Creates a resource; ALREADY_EXISTS if the name is taken.
    ///
    /// Validation and preparation run when this is called, not when the future is first
    /// polled: the future then holds only the mutation, never the 1.9 KB resource itself.
    pub fn create<'a>(
        &'a self,
        who: &'a Principal,
        input: CreateInput,
    ) -> impl Future<Output = Result<pb::Resource, ApiError>> + Send + 'a {
        let CreateInput {
            resource: mut r,
            context: ctx,
        } = input;
        let kind = resource::kind_of(&r).unwrap_or(ResourceKind::Unspecified);
        let name = r.name().to_string();
        let prepared = ctx
            .validate()
            .and_then(|()| self.prepare_input(&mut r))
            .and_then(|kind| Ok((kind, self.create_mutation(who, kind, r, &ctx)?)));
        async move {
            let result = match prepared {
                Ok((kind, (m, r))) => match self.commit(kind, &name, m).await {
                    Ok(rev) => Ok(Self::shown(*r, rev)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            self.audit_refusal(who, "create", kind, &name, &ctx, result)
        }
    }

    async fn update_once(
        &self,
        who: &Principal,
        kind: ResourceKind,
        r: &pb::Resource,
        expected: u64,
        verb: &str,
        ctx: &ChangeContext,
    ) -> Result<pb::Resource, ApiError> {
        let name = r.name().to_string();
        let Some((old_obj, old)) = self.load(kind, &name)? else {
            return Err(ApiError::NotFound {
                kind: kind_name(kind),
                name,
            });
        };
        if expected != 0 && old_obj.revision != expected {
            return Err(ApiError::Conflict {
                kind: kind_name(kind),
                name,
                expected,
                current: old_obj.revision,
            });
        }
        let now = self.now_unix_nanos();
        let new = self.merge_checked(who, &old, r.clone(), now)?;
        let expect = Expect::Revision(old_obj.revision);
        let m = self.write_mutation(kind, &new, expect, Self::change_meta(who, verb, ctx, now));
        let rev = self.commit(kind, &name, m).await?;
        Ok(Self::shown(new, rev))
    }

    /// Replaces the operator-owned fields of an existing resource.
    pub async fn update(
        &self,
        who: &Principal,
        input: UpdateInput,
    ) -> Result<pb::Resource, ApiError> {
        let UpdateInput {
            resource,
            expected_revision,
            context,
        } = input;
        self.update_as(who, resource, expected_revision, "update", &context)
            .await
    }

    /// `update`, recorded under another verb (e.g. "drift accept").
    pub async fn update_as(
        &self,
        who: &Principal,
        mut r: pb::Resource,
        expected: u64,
        verb: &str,
        ctx: &ChangeContext,
    ) -> Result<pb::Resource, ApiError> {
        let kind = resource::kind_of(&r).unwrap_or(ResourceKind::Unspecified);
        let name = r.name().to_string();
        let result = async {
            ctx.validate()?;
            let kind = self.prepare_input(&mut r)?;
            let mut attempt = 0;
            loop {
                match self.update_once(who, kind, &r, expected, verb, ctx).await {
                    Err(ApiError::Conflict { .. }) if expected == 0 && attempt < WRITE_RETRIES => {
                        attempt += 1
                    }
                    other => return other,
                }
            }
        }
        .await;
        self.audit_refusal(who, verb, kind, &name, ctx, result)
    }

    /// Creates, updates or leaves alone, so that applying the same manifest twice is a no-op.
    /// Prepared exactly as a change set's resource is (`prepare_against`).
    pub async fn apply(
        &self,
        who: &Principal,
        input: ApplyInput,
    ) -> Result<(ApplyAction, pb::Resource), ApiError> {
        let ApplyInput {
            resource: mut r,
            context: ctx,
            dry_run,
        } = input;
        let kind = resource::kind_of(&r).unwrap_or(ResourceKind::Unspecified);
        let name = r.name().to_string();
        let result = async {
            ctx.validate()?;
            let kind = self.prepare_input(&mut r)?;
            for _ in 0..WRITE_RETRIES {
                let current = self.load(kind, &name)?;
                let now = self.now_unix_nanos();
                let p = self.prepare_against(who, kind, r.clone(), current, &ctx, now)?;
                let rev = p.base_revision;
                match (p.action, p.mutation) {
                    (ApplyAction::Unchanged, _) | (_, None) => {
                        // "Unchanged" must not be said of a state a crash could undo.
                        store::wait_durable(&*self.store, rev)
                            .await
                            .map_err(store_error)?;
                        return Ok((ApplyAction::Unchanged, Self::shown(p.resource, rev)));
                    }
                    (action, Some(_)) if dry_run => {
                        self.check_references(&r)?;
                        let shown = match action {
                            // What was asked for, not the sealed form it would be stored as.
                            ApplyAction::Created => Self::shown(r, 0),
                            _ => Self::shown(p.resource, rev),
                        };
                        return Ok((action, shown));
                    }
                    (action, Some(m)) => match self.commit(kind, &name, m).await {
                        Ok(rev) => return Ok((action, Self::shown(p.resource, rev))),
                        // Lost a race with another writer: prepare again over what won.
                        Err(ApiError::AlreadyExists { .. }) if action == ApplyAction::Created => {}
                        Err(ApiError::Conflict { .. } | ApiError::NotFound { .. })
                            if action == ApplyAction::Updated => {}
                        Err(e) => return Err(e),
                    },
                }
            }
            Err(ApiError::Aborted(format!(
                "{} {name:?}: too many concurrent writers on one object; retry",
                kind_name(kind)
            )))
        }
        .await;
        let verb = if dry_run { "apply (dry run)" } else { "apply" };
        self.audit_refusal(who, verb, kind, &name, &ctx, result)
    }

    /// Writes prepared mutations as one atomic change set and waits until it is durable;
    /// returns the revisions. `names` names each mutation for errors.
    pub(crate) async fn commit_set(
        &self,
        ms: Vec<Mutation>,
        names: &[(ResourceKind, String)],
    ) -> Result<Vec<u64>, ApiError> {
        self.commit_set_with(ms, names, Vec::new()).await
    }

    /// `commit_set`, with auxiliary records written in the set's batch (a campaign's
    /// completion removes its hosts' desired-state layers in the change that keeps them as a
    /// profile).
    pub(crate) async fn commit_set_with(
        &self,
        ms: Vec<Mutation>,
        names: &[(ResourceKind, String)],
        aux: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<Vec<u64>, ApiError> {
        if ms.is_empty() {
            return Ok(Vec::new());
        }
        match self.store.commit_set_with(ms, aux).revisions().await {
            Ok(revs) => {
                if let Some(last) = revs.last() {
                    store::wait_durable(&*self.store, *last)
                        .await
                        .map_err(store_error)?;
                }
                Ok(revs)
            }
            Err((i, e)) => {
                let (kind, name) = names.get(i).cloned().unwrap_or_else(|| {
                    (ResourceKind::Unspecified, format!("change set entry {i}"))
                });
                Err(object_error(kind, &name, e))
            }
        }
    }

    /// Records a refused change set in the audit trail (one entry per resource it named).
    pub(crate) fn refuse_set(
        &self,
        who: &Principal,
        verb: &str,
        names: &[(ResourceKind, String)],
        ctx: &ChangeContext,
        e: &ApiError,
    ) {
        let refusal = super::refusal_kind(e);
        for (kind, name) in names.iter().take(100) {
            self.record_refusal(&who.name, verb, (*kind, name), ctx, refusal, &e.to_string());
        }
    }
}
