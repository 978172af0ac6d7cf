//! AgentService handlers. Agent calls are identified by the TLS client certificate (its
//! SHA-256, looked up in the enrollment records), operator calls by bearer token.

use muster::pb::{self, ResourceKind, agent_service_server::AgentService};
use std::sync::Arc;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, flat_context, lifetime};
use crate::agents::{Agents, Enrolled, NewEnrollmentToken};
use crate::model::{ApiError, Permission, timestamp};

/// gRPC face of agent enrollment and reporting.
#[derive(Debug, Clone)]
pub struct AgentApi {
    pub shared: Shared,
    pub agents: Arc<Agents>,
}

impl TryFrom<pb::CreateEnrollmentTokenRequest> for NewEnrollmentToken {
    type Error = ApiError;
    fn try_from(r: pb::CreateEnrollmentTokenRequest) -> Result<Self, ApiError> {
        Ok(Self {
            device: r.device,
            ttl: lifetime("ttl", r.ttl)?,
            context: flat_context("cli", r.reason, r.ticket),
        })
    }
}

/// Fingerprint of the client certificate the caller presented, if any.
fn peer_fingerprint<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    certs.first().map(|c| crate::pki::fingerprint(c.as_ref()))
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let r = req.into_inner();
        if r.token.is_empty() && r.pending_id.is_empty() {
            return Err(to_status(ApiError::invalid(
                "token",
                "is required (or pending_id, while an enrollment waits for approval)",
            )));
        }
        if r.csr_pem.is_empty() {
            return Err(to_status(ApiError::invalid("csr_pem", "is required")));
        }
        let out = self
            .agents
            .enroll(&r.token, &r.pending_id, &r.csr_pem, &r.hostname)
            .await
            .map_err(to_status)?;
        let result = match out {
            Enrolled::Identity {
                device,
                cert_pem,
                not_after_nanos,
            } => pb::enroll_response::Result::Identity(pb::AgentIdentity {
                device,
                certificate_pem: cert_pem,
                ca_pem: self.agents.ca_pem().to_string(),
                not_after: Some(timestamp(not_after_nanos)),
            }),
            Enrolled::Pending {
                pending_id,
                message,
            } => pb::enroll_response::Result::Pending(pb::PendingEnrollment {
                pending_id,
                message,
                retry_after: Some(pbjson_types::Duration {
                    seconds: i64::try_from(crate::agents::PENDING_RETRY.as_secs()).unwrap_or(10),
                    nanos: 0,
                }),
            }),
        };
        Ok(Response::new(pb::EnrollResponse {
            result: Some(result),
        }))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let fp = peer_fingerprint(&req);
        self.agents
            .report(fp.as_deref(), req.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let fp = peer_fingerprint(&req);
        self.agents
            .heartbeat(fp.as_deref(), req.get_ref())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let fp = peer_fingerprint(&req);
        let r = self
            .agents
            .renew(fp.as_deref(), &req.get_ref().csr_pem)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RenewResponse {
            identity: Some(pb::AgentIdentity {
                device: r.device,
                certificate_pem: r.cert_pem,
                ca_pem: self.agents.ca_pem().to_string(),
                not_after: Some(timestamp(r.not_after_nanos)),
            }),
        }))
    }

    async fn create_enrollment_token(
        &self,
        req: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        let device = req.get_ref().device.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            "agent-token",
            ResourceKind::Device,
            &device,
        )?;
        let NewEnrollmentToken {
            device,
            ttl,
            context,
        } = self.shared.input(
            &who,
            "agent-token",
            (ResourceKind::Device, &device),
            req.into_inner(),
        )?;
        let (token, expires) = self
            .agents
            .create_token(&who, &device, ttl, &context)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateEnrollmentTokenResponse {
            token,
            expires_at: Some(timestamp(expires)),
        }))
    }

    async fn approve_enrollment(
        &self,
        req: Request<pb::ApproveEnrollmentRequest>,
    ) -> Result<Response<pb::ApproveEnrollmentResponse>, Status> {
        let device = req.get_ref().device.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            "agent-approve",
            ResourceKind::Device,
            &device,
        )?;
        let r = req.into_inner();
        let fp = self
            .agents
            .approve(&who, &device, &flat_context("cli", r.reason, r.ticket))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ApproveEnrollmentResponse {
            key_fingerprint: fp,
        }))
    }

    async fn list_enrollments(
        &self,
        req: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        self.shared.authorize(
            &req,
            Permission::Read,
            "agent-list",
            ResourceKind::Device,
            "",
        )?;
        let enrollments = self.agents.enrollments().map_err(to_status)?;
        Ok(Response::new(pb::ListEnrollmentsResponse { enrollments }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::invalid_field as field;
    use super::*;

    #[test]
    fn an_enrollment_token_request_is_converted_at_the_edge() {
        let t = NewEnrollmentToken::try_from(pb::CreateEnrollmentTokenRequest {
            device: "web-01".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            reason: "rack day".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.device, "web-01");
        assert_eq!(t.ttl, Some(std::time::Duration::from_secs(600)));
        assert_eq!(t.context.reason, "rack day");
        let e = NewEnrollmentToken::try_from(pb::CreateEnrollmentTokenRequest {
            device: "web-01".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "ttl");
    }
}
