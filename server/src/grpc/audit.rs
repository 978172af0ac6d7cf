//! AuditService handlers: authorize, convert the request (`TryFrom`, refusals audited), read
//! the trail off the async workers, convert back.

use muster::pb::{self, ResourceKind, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::Shared;
use super::status::to_status;
use crate::inventory::{AuditParams, ChangeContext, parse_optional_kind};
use crate::model::{ApiError, Permission, timestamp_nanos};

/// gRPC face of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditApi(pub Shared);

impl TryFrom<pb::ListChangesRequest> for AuditParams {
    type Error = ApiError;
    fn try_from(r: pb::ListChangesRequest) -> Result<Self, ApiError> {
        let kind = parse_optional_kind("resource_kind", r.resource_kind)?;
        if !r.resource_name.is_empty() && kind.is_none() {
            return Err(ApiError::invalid(
                "resource_kind",
                "is required with resource_name",
            ));
        }
        Ok(Self {
            kind,
            name: r.resource_name,
            principal: r.principal,
            since_nanos: r.since.as_ref().map(timestamp_nanos),
            until_nanos: r.until.as_ref().map(timestamp_nanos),
            include_refused: r.include_refused,
            page_size: r.page_size,
            page_token: r.page_token,
        })
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list(
        &self,
        req: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let kind = ResourceKind::try_from(req.get_ref().resource_kind).unwrap_or_default();
        let name = req.get_ref().resource_name.clone();
        let who = self
            .0
            .authorize(&req, Permission::Read, "audit", kind, &name)?;
        let p: AuditParams = self
            .0
            .input(&who, "audit", (kind, &name), req.into_inner())?;
        // A filtered audit query may read much of the log: keep it off the async workers.
        let inventory = std::sync::Arc::clone(&self.0.inventory);
        let (changes, next_page_token) = tokio::task::spawn_blocking(move || inventory.audit(&p))
            .await
            .map_err(|e| to_status(ApiError::Internal(format!("audit task failed: {e}"))))?
            .map_err(|e| {
                // A page token this server did not hand out is refused like a bad field.
                let e = self.0.inventory.refused(
                    &who.name,
                    "audit",
                    (kind, &name),
                    &ChangeContext::default(),
                    e,
                );
                to_status(e)
            })?;
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

#[cfg(test)]
mod tests {
    use super::super::invalid_field as field;
    use super::*;

    #[test]
    fn a_listing_request_becomes_checked_params() {
        let p = AuditParams::try_from(pb::ListChangesRequest {
            resource_kind: ResourceKind::Device as i32,
            resource_name: "web-01".into(),
            principal: "alice".into(),
            since: Some(pbjson_types::Timestamp {
                seconds: 2,
                nanos: 5,
            }),
            include_refused: true,
            page_size: 7,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.kind, Some(ResourceKind::Device));
        assert_eq!(p.name, "web-01");
        assert_eq!(p.principal, "alice");
        assert_eq!(p.since_nanos, Some(2_000_000_005));
        assert_eq!(p.until_nanos, None);
        assert!(p.include_refused);
        assert_eq!(p.page_size, 7);
        let all = AuditParams::try_from(pb::ListChangesRequest::default()).unwrap();
        assert_eq!(all.kind, None, "kind 0 lists every kind");
    }

    #[test]
    fn request_shape_failures_name_the_field() {
        let e = AuditParams::try_from(pb::ListChangesRequest {
            resource_kind: 99,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "resource_kind");
        let e = AuditParams::try_from(pb::ListChangesRequest {
            resource_name: "web-01".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "resource_kind");
    }
}
