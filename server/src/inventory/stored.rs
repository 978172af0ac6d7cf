//! The stored form of a resource: encoding for the store (sealed secrets, index fields),
//! decoding into what operators see (revision set, secrets removed), loading, committing
//! durably, and the audit metadata every write carries.

use muster::pb::{self, ResourceKind, resource::Resource as R};
use prost::Message;

use super::{ChangeContext, Inventory, internal, object_error, store_error};
use crate::model::resource::{self, MAX_SECRET_BYTES};
use crate::model::{ApiError, Principal, kind_from_id, kind_id, kind_name};
use crate::store::{self, ChangeMeta, Check, Expect, Mutation, StoredObject};

impl Inventory {
    /// Waits until everything committed so far is durable, so a read never shows state that a
    /// crash could take back. Costs nothing when no write is in flight.
    pub(super) async fn settled(&self) -> Result<u64, ApiError> {
        let rev = self.store.revision();
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(store_error)?;
        Ok(rev)
    }

    /// The resource operators see, from one in hand: revision set, secrets removed.
    pub(super) fn shown(mut r: pb::Resource, revision: u64) -> pb::Resource {
        if let Some(m) = r.meta_mut() {
            m.revision = revision;
        }
        if let Some(R::Credential(c)) = r.resource.as_mut() {
            c.secret.clear();
        }
        r
    }

    /// Decodes a stored body into the resource operators see (revision set, secrets removed).
    pub(super) fn view(
        &self,
        kind: ResourceKind,
        body: &[u8],
        revision: u64,
    ) -> Result<pb::Resource, ApiError> {
        let r = pb::Resource::decode(body).map_err(internal)?;
        if resource::kind_of(&r) != Some(kind) {
            return Err(internal(format!(
                "stored {} has another kind",
                kind_name(kind)
            )));
        }
        Ok(Self::shown(r, revision))
    }

    pub(super) fn view_object(&self, o: &StoredObject) -> Result<pb::Resource, ApiError> {
        self.view(kind_from_id(o.kind), &o.body, o.revision)
    }

    /// The audit metadata of an operator's write ("api" when the client names no origin).
    pub(super) fn change_meta(
        who: &Principal,
        verb: &str,
        ctx: &ChangeContext,
        now: i64,
    ) -> ChangeMeta {
        ChangeMeta {
            principal: who.name.clone(),
            verb: verb.to_string(),
            reason: ctx.reason.clone(),
            ticket: ctx.ticket.clone(),
            origin: if ctx.origin.is_empty() {
                "api".into()
            } else {
                ctx.origin.clone()
            },
            time_unix_nanos: now,
            ..ChangeMeta::default()
        }
    }

    /// The audit metadata of a write the server makes itself (origin as given).
    pub(super) fn server_change_meta(
        principal: &str,
        verb: &str,
        ctx: &ChangeContext,
        now: i64,
    ) -> ChangeMeta {
        ChangeMeta {
            principal: principal.to_string(),
            verb: verb.to_string(),
            reason: ctx.reason.clone(),
            ticket: ctx.ticket.clone(),
            origin: ctx.origin.clone(),
            time_unix_nanos: now,
            ..ChangeMeta::default()
        }
    }

    /// Encodes a resource for storage. Credentials keep only their sealed secret, which every
    /// read path (`view`) removes before anything leaves the server.
    pub(super) fn stored(&self, kind: ResourceKind, r: &pb::Resource) -> StoredObject {
        let m = r.meta().cloned().unwrap_or_default();
        StoredObject {
            kind: kind_id(kind),
            id: m.id,
            name: m.name,
            labels: m.labels.into_iter().collect(),
            fields: resource::index_fields(r),
            revision: 0,
            body: r.encode_to_vec(),
        }
    }

    /// The write of version `r`: stored form, reference checks, audit metadata.
    pub(super) fn write_mutation(
        &self,
        kind: ResourceKind,
        r: &pb::Resource,
        expect: Expect,
        change: ChangeMeta,
    ) -> Mutation {
        Mutation {
            kind: kind_id(kind),
            name: r.name().to_string(),
            expect,
            put: Some(self.stored(kind, r)),
            checks: Self::checks_for(r),
            change,
        }
    }

    /// Seals a credential's new secret (or keeps the old sealed one when none is given).
    pub(super) fn seal_secret(
        &self,
        r: &mut pb::Resource,
        old: Option<&pb::Resource>,
    ) -> Result<(), ApiError> {
        let Some(R::Credential(c)) = r.resource.as_mut() else {
            return Ok(());
        };
        if c.secret.is_empty() {
            match old.and_then(|o| o.resource.as_ref()) {
                Some(R::Credential(o)) => {
                    c.secret = o.secret.clone();
                    c.fingerprint = o.fingerprint.clone();
                    return Ok(());
                }
                _ => {
                    return Err(ApiError::invalid(
                        "secret",
                        "is required when creating a credential",
                    ));
                }
            }
        }
        if c.secret.len() > MAX_SECRET_BYTES {
            return Err(ApiError::invalid(
                "secret",
                format!("is larger than {MAX_SECRET_BYTES} bytes"),
            ));
        }
        c.fingerprint = self.secrets.fingerprint(&c.secret);
        c.secret = self.secrets.seal(&c.secret);
        Ok(())
    }

    /// Whether `plain` is the secret `old` (a stored credential) already holds.
    pub(super) fn secret_matches(&self, old: &pb::Resource, plain: &[u8]) -> bool {
        match old.resource.as_ref() {
            Some(R::Credential(o)) => self.secrets.open(&o.secret).is_some_and(|p| p == plain),
            _ => false,
        }
    }

    /// Reads the raw stored resource (with sealed secrets) for merging.
    pub(super) fn load(
        &self,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Option<(StoredObject, pb::Resource)>, ApiError> {
        let Some(o) = self
            .store
            .get(kind_id(kind), name)
            .map_err(|e| object_error(kind, name, e))?
        else {
            return Ok(None);
        };
        let r = pb::Resource::decode(o.body.as_slice()).map_err(internal)?;
        Ok(Some((o, r)))
    }

    pub(super) fn checks_for(r: &pb::Resource) -> Vec<Check> {
        resource::references(r)
            .into_iter()
            .map(|(k, n)| Check::Exists {
                kind: kind_id(k),
                name: n,
            })
            .collect()
    }

    /// Commits one mutation and waits until it is durable; returns its revision.
    pub(super) async fn commit(
        &self,
        kind: ResourceKind,
        name: &str,
        m: Mutation,
    ) -> Result<u64, ApiError> {
        let rev = self
            .store
            .commit(m)
            .revision()
            .await
            .map_err(|e| object_error(kind, name, e))?;
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(|e| object_error(kind, name, e))?;
        Ok(rev)
    }
}
