//! InventoryService handlers: authorize, convert, call `Inventory`, convert back.

use std::pin::Pin;

use futures::Stream;
use muster::pb::{self, ResourceKind, inventory_service_server::InventoryService};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, context};
use crate::inventory::{ApplyAction, ListParams};
use crate::model::Permission;
use crate::model::resource::kind_of;

/// gRPC face of the inventory.
#[derive(Debug, Clone)]
pub struct InventoryApi(pub Shared);

fn required(r: Option<pb::Resource>) -> Result<pb::Resource, Status> {
    r.ok_or_else(|| Status::invalid_argument("resource: is required"))
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
        let body = req.into_inner();
        let out = self
            .0
            .inventory
            .create(&who, required(body.resource)?, &context(body.context))
            .await;
        out.map(Response::new).map_err(to_status)
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Resource>, Status> {
        self.0.authorize(
            &req,
            Permission::Read,
            "get",
            kind(req.get_ref().kind),
            &req.get_ref().name,
        )?;
        let r = req.into_inner();
        self.0
            .inventory
            .get(r.kind, &r.name)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.0
            .authorize(&req, Permission::Read, "list", kind(req.get_ref().kind), "")?;
        let r = req.into_inner();
        let p = ListParams {
            kind: r.kind,
            selector: r.selector,
            field_selector: r.field_selector,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        let (resources, next_page_token, revision) =
            self.0.inventory.list(&p).await.map_err(to_status)?;
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
        let body = req.into_inner();
        let out = self
            .0
            .inventory
            .update(
                &who,
                required(body.resource)?,
                body.expected_revision,
                &context(body.context),
            )
            .await;
        out.map(Response::new).map_err(to_status)
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let k = kind(req.get_ref().kind);
        let perm = write_permission(k);
        let who = self
            .0
            .authorize(&req, perm, "delete", k, &req.get_ref().name)?;
        let r = req.into_inner();
        let revision = self
            .0
            .inventory
            .delete(
                &who,
                r.kind,
                &r.name,
                r.expected_revision,
                &context(r.context),
            )
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
        let body = req.into_inner();
        let (action, resource) = self
            .0
            .inventory
            .apply(
                &who,
                required(body.resource)?,
                &context(body.context),
                body.dry_run,
            )
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
        let who = self.0.authorize(
            &req,
            Permission::Read,
            "watch",
            kind(req.get_ref().kind),
            "",
        )?;
        let r = req.into_inner();
        let inv = &self.0.inventory;
        let rx = inv
            .watch(&who, r.kind, &r.selector, r.since_revision)
            .map_err(|e| {
                use crate::model::ApiError as E;
                if matches!(e, E::Unavailable(_) | E::Internal(_) | E::ShuttingDown) {
                    return to_status(e);
                }
                inv.record_refusal(
                    &who.name,
                    "watch",
                    (kind(r.kind), ""),
                    &super::context(None),
                    crate::store::RefusalKind::Rejected,
                    &e.to_string(),
                );
                to_status(e)
            })?;
        let stream = ReceiverStream::new(rx).map(|e| e.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }
}
