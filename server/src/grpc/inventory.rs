//! InventoryService handlers: authorize, convert the request into the domain's input
//! (`TryFrom`, refusals audited), call `Inventory`, convert back.

use std::pin::Pin;

use futures::Stream;
use muster::pb::{self, ResourceKind, inventory_service_server::InventoryService};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, context};
use crate::inventory::{
    ApplyAction, ApplyInput, CreateInput, DeleteInput, GetInput, ListParams, UpdateInput,
    WatchParams, parse_kind, parse_optional_kind,
};
use crate::model::resource::kind_of;
use crate::model::{ApiError, Permission};

/// gRPC face of the inventory.
#[derive(Debug, Clone)]
pub struct InventoryApi(pub Shared);

fn required(r: Option<pb::Resource>) -> Result<pb::Resource, ApiError> {
    r.ok_or_else(|| ApiError::invalid("resource", "is required"))
}

impl TryFrom<pb::CreateRequest> for CreateInput {
    type Error = ApiError;
    fn try_from(r: pb::CreateRequest) -> Result<Self, ApiError> {
        Ok(Self {
            resource: required(r.resource)?,
            context: context(r.context),
        })
    }
}

impl TryFrom<pb::UpdateRequest> for UpdateInput {
    type Error = ApiError;
    fn try_from(r: pb::UpdateRequest) -> Result<Self, ApiError> {
        Ok(Self {
            resource: required(r.resource)?,
            expected_revision: r.expected_revision,
            context: context(r.context),
        })
    }
}

impl TryFrom<pb::ApplyRequest> for ApplyInput {
    type Error = ApiError;
    fn try_from(r: pb::ApplyRequest) -> Result<Self, ApiError> {
        Ok(Self {
            resource: required(r.resource)?,
            context: context(r.context),
            dry_run: r.dry_run,
        })
    }
}

impl TryFrom<pb::DeleteRequest> for DeleteInput {
    type Error = ApiError;
    fn try_from(r: pb::DeleteRequest) -> Result<Self, ApiError> {
        let kind = parse_kind("kind", r.kind)?;
        muster::names::validate_name("name", &r.name)?;
        Ok(Self {
            kind,
            name: r.name,
            expected_revision: r.expected_revision,
            context: context(r.context),
        })
    }
}

impl TryFrom<pb::GetRequest> for GetInput {
    type Error = ApiError;
    fn try_from(r: pb::GetRequest) -> Result<Self, ApiError> {
        let kind = parse_kind("kind", r.kind)?;
        muster::names::validate_name("name", &r.name)?;
        Ok(Self { kind, name: r.name })
    }
}

impl TryFrom<pb::ListRequest> for ListParams {
    type Error = ApiError;
    fn try_from(r: pb::ListRequest) -> Result<Self, ApiError> {
        Ok(Self {
            kind: parse_kind("kind", r.kind)?,
            selector: r.selector,
            field_selector: r.field_selector,
            page_size: r.page_size,
            page_token: r.page_token,
        })
    }
}

impl TryFrom<pb::WatchRequest> for WatchParams {
    type Error = ApiError;
    fn try_from(r: pb::WatchRequest) -> Result<Self, ApiError> {
        Ok(Self {
            kind: parse_optional_kind("kind", r.kind)?,
            selector: r.selector,
            since_revision: r.since_revision,
        })
    }
}

/// Kind and name of an optional resource, for authorization and the audit of a refusal.
fn target(r: Option<&pb::Resource>) -> (ResourceKind, String) {
    r.map_or((ResourceKind::Unspecified, String::new()), |r| {
        (kind_of(r).unwrap_or_default(), r.name().to_string())
    })
}

fn write_permission(kind: ResourceKind) -> Permission {
    if kind == ResourceKind::Credential {
        Permission::WriteSecrets
    } else {
        Permission::Write
    }
}

fn kind(k: i32) -> ResourceKind {
    ResourceKind::try_from(k).unwrap_or_default()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn create(
        &self,
        req: Request<pb::CreateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        let (kind, name) = target(req.get_ref().resource.as_ref());
        let who = self
            .0
            .authorize(&req, write_permission(kind), "create", kind, &name)?;
        let input = self
            .0
            .input(&who, "create", (kind, &name), req.into_inner())?;
        let out = self.0.inventory.create(&who, input).await;
        out.map(Response::new).map_err(to_status)
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Resource>, Status> {
        let (k, name) = (kind(req.get_ref().kind), req.get_ref().name.clone());
        let who = self.0.authorize(&req, Permission::Read, "get", k, &name)?;
        let input = self.0.input(&who, "get", (k, &name), req.into_inner())?;
        self.0
            .inventory
            .get_for(&who, input)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let k = kind(req.get_ref().kind);
        let who = self.0.authorize(&req, Permission::Read, "list", k, "")?;
        let p: ListParams = self.0.input(&who, "list", (k, ""), req.into_inner())?;
        let (resources, next_page_token, revision) = self
            .0
            .inventory
            .list_for(&who, &p)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListResponse {
            resources,
            next_page_token,
            revision,
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        let (kind, name) = target(req.get_ref().resource.as_ref());
        let who = self
            .0
            .authorize(&req, write_permission(kind), "update", kind, &name)?;
        let input = self
            .0
            .input(&who, "update", (kind, &name), req.into_inner())?;
        let out = self.0.inventory.update(&who, input).await;
        out.map(Response::new).map_err(to_status)
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (k, name) = (kind(req.get_ref().kind), req.get_ref().name.clone());
        let who = self
            .0
            .authorize(&req, write_permission(k), "delete", k, &name)?;
        let input = self.0.input(&who, "delete", (k, &name), req.into_inner())?;
        let revision = self
            .0
            .inventory
            .delete(&who, input)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteResponse { revision }))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let (kind, name) = target(req.get_ref().resource.as_ref());
        let who = self
            .0
            .authorize(&req, write_permission(kind), "apply", kind, &name)?;
        let input = self
            .0
            .input(&who, "apply", (kind, &name), req.into_inner())?;
        let (action, resource) = self
            .0
            .inventory
            .apply(&who, input)
            .await
            .map_err(to_status)?;
        let action = match action {
            ApplyAction::Created => pb::ApplyAction::Created,
            ApplyAction::Updated => pb::ApplyAction::Updated,
            ApplyAction::Unchanged => pb::ApplyAction::Unchanged,
        };
        Ok(Response::new(pb::ApplyResponse {
            action: action as i32,
            resource: Some(resource),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let k = kind(req.get_ref().kind);
        let who = self.0.authorize(&req, Permission::Read, "watch", k, "")?;
        let p = self.0.input(&who, "watch", (k, ""), req.into_inner())?;
        let rx = self.0.inventory.watch(&who, p).map_err(to_status)?;
        let stream = ReceiverStream::new(rx).map(|e| e.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::invalid_field as field;
    use super::*;

    #[test]
    fn a_missing_resource_names_the_field() {
        let e = CreateInput::try_from(pb::CreateRequest::default()).unwrap_err();
        assert_eq!(field(e), "resource");
        let e = UpdateInput::try_from(pb::UpdateRequest::default()).unwrap_err();
        assert_eq!(field(e), "resource");
        let e = ApplyInput::try_from(pb::ApplyRequest::default()).unwrap_err();
        assert_eq!(field(e), "resource");
    }

    #[test]
    fn kinds_and_names_are_checked_at_the_edge() {
        let e = DeleteInput::try_from(pb::DeleteRequest {
            name: "web-01".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "kind");
        let e = GetInput::try_from(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: "bad name\u{1b}".into(),
        })
        .unwrap_err();
        assert_eq!(field(e), "name");
        let e = ListParams::try_from(pb::ListRequest {
            kind: 999,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "kind");
        // Watch takes UNSPECIFIED as "every kind", but not a number that is no kind.
        let all = WatchParams::try_from(pb::WatchRequest::default()).unwrap();
        assert_eq!(all.kind, None);
        let e = WatchParams::try_from(pb::WatchRequest {
            kind: 999,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "kind");
        let ok = GetInput::try_from(pb::GetRequest {
            kind: ResourceKind::Device as i32,
            name: "web-01".into(),
        })
        .unwrap();
        assert_eq!(
            (ok.kind, ok.name.as_str()),
            (ResourceKind::Device, "web-01")
        );
    }
}
