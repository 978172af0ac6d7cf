//! AuditService handlers.

use muster::pb::{self, ResourceKind, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::Shared;
use super::status::to_status;
use crate::inventory::AuditParams;
use crate::model::{ApiError, Permission, timestamp_nanos};

/// gRPC face of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditApi(pub Shared);

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list(
        &self,
        req: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let kind = ResourceKind::try_from(req.get_ref().resource_kind).unwrap_or_default();
        self.0.authorize(
            &req,
            Permission::Read,
            "audit",
            kind,
            &req.get_ref().resource_name,
        )?;
        let r = req.into_inner();
        let p = AuditParams {
            kind: r.resource_kind,
            name: r.resource_name,
            principal: r.principal,
            since_nanos: r.since.as_ref().map(timestamp_nanos),
            until_nanos: r.until.as_ref().map(timestamp_nanos),
            include_refused: r.include_refused,
            page_size: r.page_size,
            page_token: r.page_token,
        };
        // A filtered audit query may read much of the log: keep it off the async workers.
        let inventory = std::sync::Arc::clone(&self.0.inventory);
        let (changes, next_page_token) = tokio::task::spawn_blocking(move || inventory.audit(&p))
            .await
            .map_err(|e| to_status(ApiError::Internal(format!("audit task failed: {e}"))))?
            .map_err(to_status)?;
        Ok(Response::new(pb::ListChangesResponse {
            changes,
            next_page_token,
        }))
    }

    async fn verify(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let full = req.get_ref().full;
        // A full verify reads the whole log: only admins may ask for one.
        let (perm, verb) = if full {
            (Permission::Admin, "audit verify --full")
        } else {
            (Permission::Read, "audit verify")
        };
        self.0
            .authorize(&req, perm, verb, ResourceKind::Unspecified, "")?;
        // Off the async workers: even an incremental verify reads from disk.
        let inventory = std::sync::Arc::clone(&self.0.inventory);
        let resp = tokio::task::spawn_blocking(move || inventory.verify_audit(full))
            .await
            .map_err(|e| to_status(ApiError::Internal(format!("verify task failed: {e}"))))?
            .map_err(to_status)?;
        Ok(Response::new(resp))
    }
}
