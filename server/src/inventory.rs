//! The inventory service: create, read, update, delete, apply, watch and audit, as domain
//! operations on `muster.v1` resources. No gRPC here: handlers in `grpc/` call these and map
//! `ApiError` to a status in one place.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use muster::clock::SharedClock;
use muster::pb::{self, ResourceKind, resource::Resource as R};
use muster::selector::Selector;
use prost::Message;
use tokio::sync::mpsc;

mod cleanup;
mod guards;

use crate::limits::Limits;
use crate::model::resource::{self, MAX_SECRET_BYTES};
use crate::model::secrets::SecretBox;
use crate::model::{ApiError, Principal, kind_from_id, kind_id, kind_name, timestamp};
use crate::observed;
use crate::store::{
    self, AuditEntry, AuditQuery, ChangeEntry, ChangeMeta, Check, Expect, ListQuery, Mutation,
    Refusal, RefusalKind, Store, StoreError, StoredObject,
};

/// Largest page a List may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// How often an idle watch stream sends a bookmark.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);
/// How many times a write without an expected revision retries a lost race before giving up.
const WRITE_RETRIES: usize = 8;

/// Why and from where a change is made.
#[derive(Debug, Clone, Default)]
pub struct ChangeContext {
    pub reason: String,
    pub ticket: String,
    pub origin: String,
}

impl ChangeContext {
    /// Checks the lengths and characters of reason, ticket and origin.
    pub fn check(&self) -> Result<(), ApiError> {
        self.validate()
    }

    fn validate(&self) -> Result<(), ApiError> {
        let limits = [
            ("context.reason", &self.reason, 1024),
            ("context.ticket", &self.ticket, 128),
            ("context.origin", &self.origin, 32),
        ];
        for (field, v, max) in limits {
            if v.len() > max {
                return Err(ApiError::invalid(
                    field,
                    format!("is longer than {max} bytes"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        Ok(())
    }
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
}

/// Parameters of a List.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub kind: i32,
    pub selector: String,
    pub field_selector: String,
    pub page_size: u32,
    pub page_token: String,
}

/// Parameters of an audit listing.
#[derive(Debug, Clone, Default)]
pub struct AuditParams {
    pub kind: i32,
    pub name: String,
    pub principal: String,
    pub since_nanos: Option<i64>,
    pub until_nanos: Option<i64>,
    pub include_refused: bool,
    pub page_size: u32,
    pub page_token: String,
}

/// The inventory: a store plus the rules of the model.
pub struct Inventory {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    /// The one source of time for everything built on the inventory.
    clock: SharedClock,
    /// Flips to true when the server stops, so open watch streams end instead of holding the
    /// graceful shutdown open (clients resume from their last revision elsewhere).
    stopping: tokio::sync::watch::Sender<bool>,
    /// Where observed-state changes are sent to the drift engine.
    drift: crate::drift::Notifier,
    /// Caps on refusal records, watch streams and verifies (`inventory/guards.rs`).
    guards: guards::Guards,
}

/// One resource of a change set, prepared: what will happen to it and the write that does it.
#[derive(Debug, Clone)]
pub struct PreparedWrite {
    pub kind: ResourceKind,
    pub name: String,
    pub action: ApplyAction,
    /// The resource as it will be stored.
    pub resource: pb::Resource,
    /// None when nothing changes.
    pub mutation: Option<Mutation>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn parse_kind(field: &str, kind: i32) -> Result<ResourceKind, ApiError> {
    match ResourceKind::try_from(kind) {
        Ok(ResourceKind::Unspecified) | Err(_) => Err(ApiError::invalid(
            field,
            "is required: one of SITE, RACK, DEVICE, PROFILE, WINDOW, CREDENTIAL",
        )),
        Ok(k) => Ok(k),
    }
}

fn bad_token() -> ApiError {
    ApiError::invalid(
        "page_token",
        "is not a token returned by this server for this listing",
    )
}

fn page_size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE as usize,
        n => n.min(MAX_PAGE_SIZE) as usize,
    }
}

impl Inventory {
    /// An inventory over `store`, sealing credentials with `secrets`, with default limits;
    /// observed-state changes go to the drift engine through `drift`.
    pub fn new(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        clock: SharedClock,
        drift: crate::drift::Notifier,
    ) -> Self {
        Self::with_limits(store, secrets, Limits::default(), clock, drift)
    }

    /// An inventory with the given limits (from the server config).
    pub fn with_limits(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        limits: Limits,
        clock: SharedClock,
        drift: crate::drift::Notifier,
    ) -> Self {
        Self {
            store,
            secrets,
            clock,
            stopping: tokio::sync::watch::channel(false).0,
            drift,
            guards: guards::Guards::new(limits),
        }
    }

    /// The clock everything built on the inventory reads time from.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Unix nanoseconds now, from the injected clock.
    pub fn now_unix_nanos(&self) -> i64 {
        self.clock.now_unix_nanos()
    }

    /// Where changes of observed state are sent (to the drift engine).
    pub fn drift(&self) -> &crate::drift::Notifier {
        &self.drift
    }

    /// Validates one resource of a change set and works out its write, without writing.
    pub(crate) fn prepare_write(
        &self,
        who: &Principal,
        mut r: pb::Resource,
        ctx: &ChangeContext,
        now: i64,
    ) -> Result<PreparedWrite, ApiError> {
        let kind = Self::prepare(&mut r)?;
        self.check_rack_site(&r)?;
        let name = r.name().to_string();
        match self.load(kind, &name)? {
            None => {
                crate::scope::check_write(self, who, &r)?;
                let r = self.new_object(who, r, now)?;
                let m = Mutation {
                    kind: kind_id(kind),
                    name: name.clone(),
                    expect: Expect::Absent,
                    put: Some(self.stored(kind, &r)),
                    checks: Self::checks_for(&r),
                    change: Self::change_meta(who, "apply", ctx, now),
                };
                Ok(PreparedWrite {
                    kind,
                    name,
                    action: ApplyAction::Created,
                    resource: r,
                    mutation: Some(m),
                })
            }
            Some((old_obj, old)) => {
                if let Some(R::Credential(c)) = r.resource.as_mut()
                    && !c.secret.is_empty()
                    && self.secret_matches(&old, &c.secret)
                {
                    c.secret.clear();
                }
                let new = self.merged(who, &old, r, now)?;
                crate::scope::check(who, &old)?;
                crate::scope::check_write(self, who, &new)?;
                if resource::comparable(&new) == resource::comparable(&old) {
                    return Ok(PreparedWrite {
                        kind,
                        name,
                        action: ApplyAction::Unchanged,
                        resource: old,
                        mutation: None,
                    });
                }
                let m = Mutation {
                    kind: kind_id(kind),
                    name: name.clone(),
                    expect: Expect::Revision(old_obj.revision),
                    put: Some(self.stored(kind, &new)),
                    checks: Self::checks_for(&new),
                    change: Self::change_meta(who, "apply", ctx, now),
                };
                Ok(PreparedWrite {
                    kind,
                    name,
                    action: ApplyAction::Updated,
                    resource: new,
                    mutation: Some(m),
                })
            }
        }
    }

    /// Writes prepared mutations as one atomic change set and waits until it is durable;
    /// returns the revisions. `names` names each mutation for errors.
    pub(crate) async fn commit_set(
        &self,
        ms: Vec<Mutation>,
        names: &[(ResourceKind, String)],
    ) -> Result<Vec<u64>, ApiError> {
        if ms.is_empty() {
            return Ok(Vec::new());
        }
        match self.store.commit_set(ms).revisions().await {
            Ok(revs) => {
                if let Some(last) = revs.last() {
                    store::wait_durable(&*self.store, *last)
                        .await
                        .map_err(store_error)?;
                }
                Ok(revs)
            }
            Err((i, e)) => {
                let (kind, name) = names
                    .get(i)
                    .cloned()
                    .unwrap_or((ResourceKind::Unspecified, String::new()));
                Err(crate::store_map::api_error(kind_name(kind), &name, e))
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
        let refusal = refusal_kind(e);
        for (kind, name) in names.iter().take(100) {
            self.record_refusal(&who.name, verb, (*kind, name), ctx, refusal, &e.to_string());
        }
    }

    /// Ends every open watch stream (called when the server shuts down).
    pub fn stop_watches(&self) {
        let _ = self.stopping.send_replace(true);
    }

    /// The underlying store (for admin operations and metrics).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Waits until everything committed so far is durable, so a read never shows state that a
    /// crash could take back. Costs nothing when no write is in flight.
    async fn settled(&self) -> Result<u64, ApiError> {
        let rev = self.store.revision();
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(store_error)?;
        Ok(rev)
    }

    /// The resource operators see, from one in hand: revision set, secrets removed.
    fn shown(mut r: pb::Resource, revision: u64) -> pb::Resource {
        if let Some(m) = r.meta_mut() {
            m.revision = revision;
        }
        if let Some(R::Credential(c)) = r.resource.as_mut() {
            c.secret.clear();
        }
        r
    }

    /// Decodes a stored body into the resource operators see (revision set, secrets removed).
    fn view(
        &self,
        kind: ResourceKind,
        body: &[u8],
        revision: u64,
    ) -> Result<pb::Resource, ApiError> {
        let mut r = pb::Resource::decode(body).map_err(internal)?;
        if resource::kind_of(&r) != Some(kind) {
            return Err(internal(format!(
                "stored {} has another kind",
                kind_name(kind)
            )));
        }
        if let Some(m) = r.meta_mut() {
            m.revision = revision;
        }
        if let Some(R::Credential(c)) = r.resource.as_mut() {
            c.secret.clear();
        }
        Ok(r)
    }

    fn view_object(&self, o: &StoredObject) -> Result<pb::Resource, ApiError> {
        self.view(kind_from_id(o.kind), &o.body, o.revision)
    }

    fn audit_refusal<T>(
        &self,
        who: &Principal,
        verb: &str,
        kind: ResourceKind,
        name: &str,
        ctx: &ChangeContext,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match &r {
            // Not a refusal: the write may or may not have happened; the log says why.
            Err(ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::ShuttingDown) => {}
            Err(e) => self.record_refusal(
                &who.name,
                verb,
                (kind, name),
                ctx,
                refusal_kind(e),
                &e.to_string(),
            ),
            Ok(_) => {}
        }
        r
    }

    fn change_meta(who: &Principal, verb: &str, ctx: &ChangeContext, now: i64) -> ChangeMeta {
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

    /// Encodes a resource for storage. Credentials keep only their sealed secret, which every
    /// read path (`view`) removes before anything leaves the server.
    fn stored(&self, kind: ResourceKind, r: &pb::Resource) -> StoredObject {
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

    /// Seals a credential's new secret (or keeps the old sealed one when none is given).
    fn seal_secret(
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

    /// Reads the raw stored resource (with sealed secrets) for merging.
    fn load(
        &self,
        kind: ResourceKind,
        name: &str,
    ) -> Result<Option<(StoredObject, pb::Resource)>, ApiError> {
        let Some(o) = self
            .store
            .get(kind_id(kind), name)
            .map_err(|e| crate::store_map::api_error(kind_name(kind), name, e))?
        else {
            return Ok(None);
        };
        let r = pb::Resource::decode(o.body.as_slice()).map_err(internal)?;
        Ok(Some((o, r)))
    }

    fn checks_for(r: &pb::Resource) -> Vec<Check> {
        resource::references(r)
            .into_iter()
            .map(|(k, n)| Check::Exists {
                kind: kind_id(k),
                name: n,
            })
            .collect()
    }

    /// Prepares operator input: kind, defaults, server-owned parts cleared, validation.
    fn prepare(r: &mut pb::Resource) -> Result<ResourceKind, ApiError> {
        let kind = resource::kind_of(r).ok_or_else(resource::no_variant)?;
        resource::clear_server_owned(r);
        resource::apply_defaults(r);
        resource::validate(r)?;
        Ok(kind)
    }

    async fn commit(&self, kind: ResourceKind, name: &str, m: Mutation) -> Result<u64, ApiError> {
        let rev = self
            .store
            .commit(m)
            .revision()
            .await
            .map_err(|e| crate::store_map::api_error(kind_name(kind), name, e))?;
        store::wait_durable(&*self.store, rev)
            .await
            .map_err(|e| crate::store_map::api_error(kind_name(kind), name, e))?;
        Ok(rev)
    }

    fn new_object(
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

    /// Everything a create does before it waits: the stored form and its mutation. Kept out
    /// of the async path so that its futures hold no `pb::Resource` (1.9 KB each) across an
    /// await: a 12.5 KB create future was memcpy'd at every layer, ~a quarter of the request
    /// handling time.
    fn create_mutation(
        &self,
        who: &Principal,
        kind: ResourceKind,
        r: pb::Resource,
        verb: &str,
        ctx: &ChangeContext,
    ) -> Result<(Mutation, Box<pb::Resource>), ApiError> {
        crate::scope::check_write(self, who, &r)?;
        let now = self.now_unix_nanos();
        let name = r.name().to_string();
        let r = self.new_object(who, r, now)?;
        let obj = self.stored(kind, &r);
        let m = Mutation {
            kind: kind_id(kind),
            name,
            expect: Expect::Absent,
            put: Some(obj),
            checks: Self::checks_for(&r),
            change: Self::change_meta(who, verb, ctx, now),
        };
        Ok((m, Box::new(r)))
    }

    /// Commits a create prepared by `create_mutation`; returns the resource as stored.
    async fn create_prepared(
        &self,
        kind: ResourceKind,
        (m, r): (Mutation, Box<pb::Resource>),
    ) -> Result<pb::Resource, ApiError> {
        let name = m.name.clone();
        let rev = self.commit(kind, &name, m).await?;
        Ok(Self::shown(*r, rev))
    }

    /// Creates a resource; ALREADY_EXISTS if the name is taken.
    ///
    /// Validation and preparation run when this is called, not when the future is first
    /// polled: the future then holds only the mutation, never the 1.9 KB resource itself.
    pub fn create<'a>(
        &'a self,
        who: &'a Principal,
        mut r: pb::Resource,
        ctx: &'a ChangeContext,
    ) -> impl Future<Output = Result<pb::Resource, ApiError>> + Send + 'a {
        let kind = resource::kind_of(&r).unwrap_or(ResourceKind::Unspecified);
        let name = r.name().to_string();
        let prepared = ctx
            .validate()
            .and_then(|()| Self::prepare(&mut r))
            .and_then(|kind| {
                self.check_rack_site(&r)?;
                Ok((kind, self.create_mutation(who, kind, r, "create", ctx)?))
            });
        async move {
            let result = match prepared {
                Ok((kind, prepared)) => self.create_prepared(kind, prepared).await,
                Err(e) => Err(e),
            };
            self.audit_refusal(who, "create", kind, &name, ctx, result)
        }
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
        let new = self.merged(who, &old, r.clone(), now)?;
        // Before and after: a scoped token can neither reach nor move a host out of scope.
        crate::scope::check(who, &old)?;
        crate::scope::check_write(self, who, &new)?;
        let obj = self.stored(kind, &new);
        let m = Mutation {
            kind: kind_id(kind),
            name: name.clone(),
            expect: Expect::Revision(old_obj.revision),
            put: Some(obj),
            checks: Self::checks_for(&new),
            change: Self::change_meta(who, verb, ctx, now),
        };
        let rev = self.commit(kind, &name, m).await?;
        Ok(Self::shown(new, rev))
    }

    /// Replaces the operator-owned fields of an existing resource.
    pub async fn update(
        &self,
        who: &Principal,
        r: pb::Resource,
        expected: u64,
        ctx: &ChangeContext,
    ) -> Result<pb::Resource, ApiError> {
        self.update_as(who, r, expected, "update", ctx).await
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
            let kind = Self::prepare(&mut r)?;
            self.check_rack_site(&r)?;
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
    pub async fn apply(
        &self,
        who: &Principal,
        mut r: pb::Resource,
        ctx: &ChangeContext,
        dry_run: bool,
    ) -> Result<(ApplyAction, pb::Resource), ApiError> {
        let kind = resource::kind_of(&r).unwrap_or(ResourceKind::Unspecified);
        let name = r.name().to_string();
        let result = async {
            ctx.validate()?;
            let kind = Self::prepare(&mut r)?;
            self.check_rack_site(&r)?;
            for _ in 0..WRITE_RETRIES {
                match self.load(kind, &name)? {
                    None => {
                        if dry_run {
                            crate::scope::check_write(self, who, &r)?;
                            self.check_references(&r)?;
                            let mut shown = r;
                            if let Some(R::Credential(c)) = shown.resource.as_mut() {
                                c.secret.clear();
                            }
                            return Ok((ApplyAction::Created, shown));
                        }
                        let prepared = self.create_mutation(who, kind, r.clone(), "apply", ctx)?;
                        match self.create_prepared(kind, prepared).await {
                            Err(ApiError::AlreadyExists { .. }) => continue,
                            other => return other.map(|v| (ApplyAction::Created, v)),
                        }
                    }
                    Some((old_obj, old)) => {
                        // Re-sending the stored secret is not a change (sealing it again would
                        // only pick a new nonce).
                        let mut incoming = r.clone();
                        if let Some(R::Credential(c)) = incoming.resource.as_mut()
                            && !c.secret.is_empty()
                            && self.secret_matches(&old, &c.secret)
                        {
                            c.secret.clear();
                        }
                        let candidate =
                            self.merged(who, &old, incoming.clone(), self.now_unix_nanos())?;
                        crate::scope::check(who, &old)?;
                        crate::scope::check_write(self, who, &candidate)?;
                        if resource::comparable(&candidate) == resource::comparable(&old) {
                            // "Unchanged" must not be said of a state a crash could undo.
                            store::wait_durable(&*self.store, old_obj.revision)
                                .await
                                .map_err(store_error)?;
                            return Ok((
                                ApplyAction::Unchanged,
                                self.view(kind, &old_obj.body, old_obj.revision)?,
                            ));
                        }
                        if dry_run {
                            self.check_references(&r)?;
                            return Ok((
                                ApplyAction::Updated,
                                self.view(kind, &candidate.encode_to_vec(), old_obj.revision)?,
                            ));
                        }
                        match self
                            .update_once(who, kind, &incoming, old_obj.revision, "apply", ctx)
                            .await
                        {
                            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => continue,
                            other => return other.map(|v| (ApplyAction::Updated, v)),
                        }
                    }
                }
            }
            Err(ApiError::Unavailable(
                "too many concurrent writers on one object".into(),
            ))
        }
        .await;
        let verb = if dry_run { "apply (dry run)" } else { "apply" };
        self.audit_refusal(who, verb, kind, &name, ctx, result)
    }

    fn secret_matches(&self, old: &pb::Resource, plain: &[u8]) -> bool {
        match old.resource.as_ref() {
            Some(R::Credential(o)) => self.secrets.open(&o.secret).is_some_and(|p| p == plain),
            _ => false,
        }
    }

    /// Read-only reference check, for dry runs.
    fn check_references(&self, r: &pb::Resource) -> Result<(), ApiError> {
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

    /// Deletes a resource; refused while other objects still refer to it.
    pub async fn delete(
        &self,
        who: &Principal,
        kind: i32,
        name: &str,
        expected: u64,
        ctx: &ChangeContext,
    ) -> Result<u64, ApiError> {
        let k = ResourceKind::try_from(kind).unwrap_or(ResourceKind::Unspecified);
        let result = async {
            ctx.validate()?;
            let kind = parse_kind("kind", kind)?;
            muster::names::validate_name("name", name)?;
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
                match self.commit_delete(kind, name, &old_obj.id, m).await {
                    Err(ApiError::Conflict { .. }) if expected == 0 && attempt < WRITE_RETRIES => {
                        attempt += 1
                    }
                    other => return other,
                }
            }
        }
        .await;
        self.audit_refusal(who, "delete", k, name, ctx, result)
    }

    /// One resource by kind and name.
    pub async fn get(&self, kind: i32, name: &str) -> Result<pb::Resource, ApiError> {
        let kind = parse_kind("kind", kind)?;
        muster::names::validate_name("name", name)?;
        self.settled().await?;
        let o = self
            .store
            .get(kind_id(kind), name)
            .map_err(|e| crate::store_map::api_error(kind_name(kind), name, e))?
            .ok_or_else(|| ApiError::NotFound {
                kind: kind_name(kind),
                name: name.to_string(),
            })?;
        let mut r = self.view_object(&o)?;
        self.with_observed(&mut r, &o.id, true)?;
        Ok(r)
    }

    /// Adds a device's stored observed state to its status: everything for a Get, the report
    /// metadata (last report, agent version) for a List.
    fn with_observed(&self, r: &mut pb::Resource, id: &str, facts: bool) -> Result<(), ApiError> {
        let Some(R::Device(d)) = r.resource.as_mut() else {
            return Ok(());
        };
        if facts {
            let stored = observed::load(&*self.store, id)?;
            if stored.meta.is_some() || !stored.sel.is_empty() {
                observed::fill_status(d.status.get_or_insert_with(Default::default), &stored, true);
            }
        } else if let (_, Some(meta)) = observed::load_meta(&*self.store, id)? {
            observed::fill_meta(d.status.get_or_insert_with(Default::default), &meta);
        }
        Ok(())
    }

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
            .map_err(|e| crate::store_map::api_error("device", name, e))?;
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

    fn server_change_meta(
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

    /// A page of resources; returns them, the next page token, and the revision read at.
    pub async fn list(&self, p: &ListParams) -> Result<(Vec<pb::Resource>, String, u64), ApiError> {
        let kind = parse_kind("kind", p.kind)?;
        let labels = Selector::parse(&p.selector)
            .map_err(|e| ApiError::invalid("selector", e.to_string()))?;
        let fields = Selector::parse_fields(&p.field_selector)
            .map_err(|e| ApiError::invalid("field_selector", e.to_string()))?;
        let allowed = resource::indexed_fields(kind);
        if let Some(r) = fields
            .requirements
            .iter()
            .find(|r| r.key != "name" && !allowed.contains(&r.key.as_str()))
        {
            let mut names = vec!["name"];
            names.extend_from_slice(allowed);
            return Err(ApiError::invalid(
                "field_selector",
                format!(
                    "{:?} is not a selectable field of {}; use one of: {}",
                    r.key,
                    kind_name(kind),
                    names.join(", ")
                ),
            ));
        }
        let after_id = if p.page_token.is_empty() {
            None
        } else {
            let raw = URL_SAFE_NO_PAD
                .decode(&p.page_token)
                .map_err(|_| bad_token())?;
            let s = String::from_utf8(raw).map_err(|_| bad_token())?;
            let id = s.strip_prefix("l1:").ok_or_else(bad_token)?;
            if ulid::Ulid::from_string(id).is_err() {
                return Err(bad_token());
            }
            Some(id.to_string())
        };
        // Read before the scan: a watch from here may repeat a change the list already shows,
        // but never misses one.
        let revision = self.settled().await?;
        let q = ListQuery {
            kind: kind_id(kind),
            labels,
            fields,
            after_id,
            limit: page_size(p.page_size),
        };
        let page = self
            .store
            .list(&q)
            .map_err(|e| crate::store_map::api_error(kind_name(kind), "", e))?;
        let next = match (page.more, &page.last_id) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(format!("l1:{last}")),
            _ => String::new(),
        };
        let items = page
            .objects
            .iter()
            .map(|o| {
                let mut r = self.view_object(o)?;
                self.with_observed(&mut r, &o.id, false)?;
                Ok(r)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok((items, next, revision))
    }

    fn change_to_event(&self, c: &ChangeEntry) -> Result<pb::WatchEvent, ApiError> {
        let kind = kind_from_id(c.kind);
        let (ty, body) = match (&c.before, &c.after) {
            (_, Some(after)) if c.before_revision == 0 => (pb::EventType::Added, after),
            (_, Some(after)) => (pb::EventType::Modified, after),
            (Some(before), None) => (pb::EventType::Deleted, before),
            (None, None) => return Err(internal("change without a body")),
        };
        Ok(pb::WatchEvent {
            revision: c.revision,
            r#type: ty as i32,
            object: Some(self.view(kind, body, c.revision)?),
        })
    }

    /// Streams events after `since` (0: from now), filtered by kind and selector, until the
    /// receiver is dropped. Only durable revisions are sent, so a client resuming after a server
    /// crash never misses or repeats an event.
    pub fn watch(
        self: &Arc<Self>,
        who: &Principal,
        kind: i32,
        selector: &str,
        since: u64,
    ) -> Result<mpsc::Receiver<Result<pb::WatchEvent, ApiError>>, ApiError> {
        let kind = match ResourceKind::try_from(kind) {
            Ok(ResourceKind::Unspecified) => None,
            Ok(k) => Some(kind_id(k)),
            Err(_) => {
                return Err(ApiError::invalid(
                    "kind",
                    format!("{kind} is not a resource kind"),
                ));
            }
        };
        let selector =
            Selector::parse(selector).map_err(|e| ApiError::invalid("selector", e.to_string()))?;
        let mut durable = self.store.durable();
        let current = match &*durable.borrow_and_update() {
            Ok(d) => *d,
            Err(e) => return Err(ApiError::Unavailable(e.clone())),
        };
        if since > current {
            return Err(ApiError::OutOfRange(format!(
                "since_revision {since} is ahead of the store (revision {current})"
            )));
        }
        let mut last = if since == 0 { current } else { since };
        // Held by the stream's task: the slot frees when the client goes away.
        let permit = self.watch_permit(who)?;
        let (tx, rx) = mpsc::channel(256);
        let this = Arc::clone(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let upto = durable.borrow_and_update().clone();
                let upto = match upto {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::Unavailable(e))).await;
                        return;
                    }
                };
                while last < upto {
                    let batch = match this.store.changes(last, upto, 512) {
                        Ok(b) if !b.is_empty() => b,
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx
                                .send(Err(crate::store_map::api_error("event", "", e)))
                                .await;
                            return;
                        }
                    };
                    for c in batch {
                        last = c.revision;
                        let kind_ok = kind.is_none_or(|k| k == c.kind);
                        if kind_ok && selector.matches(|k| c.labels.get(k).map(String::as_str)) {
                            let ev = this.change_to_event(&c);
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    () = async {
                        while !*stopping.borrow_and_update() {
                            if stopping.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                    } => {
                        let _ = tx.send(Err(ApiError::ShuttingDown)).await;
                        return;
                    }
                    _ = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                        let b = pb::WatchEvent { revision: last, r#type: pb::EventType::Bookmark as i32, object: None };
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Audit entries, oldest first, with a token for the next page.
    pub fn audit(&self, p: &AuditParams) -> Result<(Vec<pb::Change>, String), ApiError> {
        let kind = match ResourceKind::try_from(p.kind) {
            Ok(ResourceKind::Unspecified) => None,
            Ok(k) => Some(kind_id(k)),
            Err(_) => {
                return Err(ApiError::invalid(
                    "resource_kind",
                    format!("{} is not a resource kind", p.kind),
                ));
            }
        };
        if !p.name.is_empty() && kind.is_none() {
            return Err(ApiError::invalid(
                "resource_kind",
                "is required with resource_name",
            ));
        }
        let (after_revision, after_seq) = if p.page_token.is_empty() {
            (0, 0)
        } else {
            let raw = URL_SAFE_NO_PAD
                .decode(&p.page_token)
                .map_err(|_| bad_token())?;
            let s = String::from_utf8(raw).map_err(|_| bad_token())?;
            let rest = s.strip_prefix("a1:").ok_or_else(bad_token)?;
            let (r, q) = rest.split_once(':').ok_or_else(bad_token)?;
            (
                r.parse().map_err(|_| bad_token())?,
                q.parse().map_err(|_| bad_token())?,
            )
        };
        let limit = page_size(p.page_size);
        let q = AuditQuery {
            kind,
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            principal: (!p.principal.is_empty()).then(|| p.principal.clone()),
            since_nanos: p.since_nanos,
            until_nanos: p.until_nanos,
            include_refused: p.include_refused,
            after_revision,
            after_seq,
            limit,
        };
        let page = self
            .store
            .audit(&q)
            .map_err(|e| crate::store_map::api_error("audit", "trail", e))?;
        let mut out = Vec::with_capacity(page.entries.len());
        for e in &page.entries {
            out.push(match e {
                AuditEntry::Accepted(c) => self.change_to_audit(c)?,
                AuditEntry::Refused(r) => refusal_to_audit(r),
            });
        }
        let next = match page.next {
            Some((rev, seq)) => URL_SAFE_NO_PAD.encode(format!("a1:{rev}:{seq}")),
            None => String::new(),
        };
        Ok((out, next))
    }

    fn change_to_audit(&self, c: &ChangeEntry) -> Result<pb::Change, ApiError> {
        let kind = kind_from_id(c.kind);
        let before = c
            .before
            .as_ref()
            .map(|b| self.view(kind, b, c.before_revision))
            .transpose()?;
        let after = c
            .after
            .as_ref()
            .map(|b| self.view(kind, b, c.revision))
            .transpose()?;
        Ok(pb::Change {
            revision: c.revision,
            time: Some(timestamp(c.meta.time_unix_nanos)),
            principal: c.meta.principal.clone(),
            verb: c.meta.verb.clone(),
            resource_kind: kind as i32,
            resource_name: c.name.clone(),
            resource_id: c.id.clone(),
            before,
            after,
            reason: c.meta.reason.clone(),
            ticket: c.meta.ticket.clone(),
            origin: c.meta.origin.clone(),
            outcome: pb::ChangeOutcome::Accepted as i32,
            message: String::new(),
            prev_hash: c.chain.map(|l| hex::encode(l.prev)).unwrap_or_default(),
            hash: c.chain.map(|l| hex::encode(l.hash)).unwrap_or_default(),
            seq: 0,
            change_set: c.meta.change_set,
            change_set_size: c.meta.change_set_size,
        })
    }
}

/// Input from a refused request, made safe to store and print: at most `max` characters,
/// control characters (terminal escapes) replaced.
/// Text from a client made safe for logs and the audit trail: bounded, no control characters.
pub(crate) fn printable_text(s: &str, max: usize) -> String {
    printable(s, max)
}

fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn refusal_to_audit(r: &Refusal) -> pb::Change {
    pb::Change {
        revision: 0,
        time: Some(timestamp(r.meta.time_unix_nanos)),
        principal: r.meta.principal.clone(),
        verb: r.meta.verb.clone(),
        resource_kind: kind_from_id(r.kind) as i32,
        resource_name: r.name.clone(),
        reason: r.meta.reason.clone(),
        ticket: r.meta.ticket.clone(),
        origin: r.meta.origin.clone(),
        outcome: match r.refusal {
            RefusalKind::Rejected => pb::ChangeOutcome::Rejected as i32,
            RefusalKind::Denied => pb::ChangeOutcome::Denied as i32,
            RefusalKind::Accepted => pb::ChangeOutcome::Accepted as i32,
        },
        message: r.message.clone(),
        seq: r.seq,
        ..Default::default()
    }
}

/// How a refusal is audited: DENIED for authentication and permission (scope) refusals.
pub fn refusal_kind(e: &ApiError) -> RefusalKind {
    match e {
        ApiError::PermissionDenied(_) | ApiError::Unauthenticated(_) => RefusalKind::Denied,
        _ => RefusalKind::Rejected,
    }
}

/// Maps a store error outside a specific object (used by admin operations).
pub fn store_error(e: StoreError) -> ApiError {
    crate::store_map::api_error("store", "", e)
}
