//! ConfigService handlers: authorize, convert, call `Planner`, convert back.

use muster::pb::{self, ResourceKind, config_service_server::ConfigService};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, context};
use crate::drift::Planner;
use crate::model::Permission;
use crate::model::resource::kind_of;

/// gRPC face of plan, atomic apply and drift.
#[derive(Debug, Clone)]
pub struct ConfigApi {
    pub shared: Shared,
    pub planner: Planner,
}

/// The permission a set needs: writing secrets if it holds a credential.
fn set_permission(resources: &[pb::Resource]) -> Permission {
    if resources
        .iter()
        .any(|r| kind_of(r) == Some(ResourceKind::Credential))
    {
        Permission::WriteSecrets
    } else {
        Permission::Write
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn plan(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        // A plan compares incoming secrets with stored ones (unchanged or not): only those who
        // may write secrets may ask, or it would be an oracle for guessing them.
        let perm = match set_permission(&req.get_ref().resources) {
            Permission::WriteSecrets => Permission::WriteSecrets,
            _ => Permission::Read,
        };
        let who = self
            .shared
            .authorize(&req, perm, "plan", ResourceKind::Unspecified, "")?;
        let r = req.into_inner();
        self.planner
            .plan(&who, r.resources, r.include_unchanged)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn apply(
        &self,
        req: Request<pb::ApplySetRequest>,
    ) -> Result<Response<pb::ApplySetResponse>, Status> {
        let perm = set_permission(&req.get_ref().resources);
        let who = self
            .shared
            .authorize(&req, perm, "apply", ResourceKind::Unspecified, "")?;
        let r = req.into_inner();
        self.planner
            .apply(&who, r.resources, &context(r.context))
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn drift(
        &self,
        req: Request<pb::DriftRequest>,
    ) -> Result<Response<pb::DriftResponse>, Status> {
        self.shared
            .authorize(&req, Permission::Read, "drift", ResourceKind::Device, "")?;
        self.planner
            .drift(req.get_ref())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn accept_drift(
        &self,
        req: Request<pb::AcceptDriftRequest>,
    ) -> Result<Response<pb::AcceptDriftResponse>, Status> {
        let name = req.get_ref().device.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            "drift accept",
            ResourceKind::Device,
            &name,
        )?;
        let r = req.into_inner();
        self.planner
            .accept(&who, &r.device, &r.field, &context(r.context))
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
