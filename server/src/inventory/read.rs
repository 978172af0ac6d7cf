//! Reads: one resource (with its device's observed state) and pages of a kind. Every read
//! waits until what it shows is durable, and audits its refusal like a write does.

use muster::pb::{self, ResourceKind, resource::Resource as R};

use super::query::{field_selector, label_selector, list_token, page_size, parse_list_token};
use super::{GetInput, Inventory, object_error};
use crate::model::{ApiError, Principal, kind_id, kind_name};
use crate::observed;
use crate::store::ListQuery;

/// Parameters of a List.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub kind: ResourceKind,
    pub selector: String,
    pub field_selector: String,
    pub page_size: u32,
    pub page_token: String,
}

impl Inventory {
    /// One resource by kind and name, for `who` (its refusal is audited).
    pub async fn get_for(
        &self,
        who: &Principal,
        input: GetInput,
    ) -> Result<pb::Resource, ApiError> {
        let ctx = super::ChangeContext::default();
        match self.get_valid(input.kind, &input.name).await {
            // "Not there" is an answer, not a refused attempt: a poller waiting for a device
            // to appear must not write to the audit trail on every try.
            Err(e @ ApiError::NotFound { .. }) => Err(e),
            r => self.audit_refusal(who, "get", input.kind, &input.name, &ctx, r),
        }
    }

    /// One resource by kind and name (for the server's own reads).
    pub async fn get(&self, kind: i32, name: &str) -> Result<pb::Resource, ApiError> {
        let kind = super::parse_kind("kind", kind)?;
        muster::names::validate_name("name", name)?;
        self.get_valid(kind, name).await
    }

    async fn get_valid(&self, kind: ResourceKind, name: &str) -> Result<pb::Resource, ApiError> {
        self.settled().await?;
        let o = self
            .store
            .get(kind_id(kind), name)
            .map_err(|e| object_error(kind, name, e))?
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

    /// A page of resources for `who` (its refusal is audited); see `list`.
    pub async fn list_for(
        &self,
        who: &Principal,
        p: &ListParams,
    ) -> Result<(Vec<pb::Resource>, String, u64), ApiError> {
        let ctx = super::ChangeContext::default();
        let r = self.list(p).await;
        self.audit_refusal(who, "list", p.kind, "", &ctx, r)
    }

    /// A page of resources; returns them, the next page token, and the revision read at.
    pub async fn list(&self, p: &ListParams) -> Result<(Vec<pb::Resource>, String, u64), ApiError> {
        let kind = super::parse_kind("kind", p.kind as i32)?;
        let labels = label_selector("selector", &p.selector)?;
        let fields = field_selector(kind, &p.field_selector)?;
        let after_id = parse_list_token(&p.page_token)?;
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
            .map_err(|e| object_error(kind, "(list)", e))?;
        let next = match (page.more, &page.last_id) {
            (true, Some(last)) => list_token(last),
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
}
