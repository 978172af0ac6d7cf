//! ExportService handlers: the Ansible bridge's one streaming read and its agentless-facts
//! write. Authorize, convert the request (`TryFrom`, refusals audited), call
//! `export`/`ingest`, convert back.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use muster::pb::{self, ResourceKind, export_service_server::ExportService};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Shared;
use super::status::to_status;
use crate::export::{self, ExportParams};
use crate::ingest::{self, Ingest};
use crate::inventory::ChangeContext;
use crate::model::{ApiError, Permission};

/// gRPC face of the bulk export and agentless ingest.
#[derive(Debug, Clone)]
pub struct ExportApi(pub Shared);

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

fn duration(d: Option<pbjson_types::Duration>) -> Result<Option<Duration>, ApiError> {
    d.map(|d| {
        u64::try_from(d.seconds)
            .map(Duration::from_secs)
            .map_err(|_| ApiError::invalid("expected_interval", "must not be negative"))
    })
    .transpose()
}

impl TryFrom<pb::ExportRequest> for ExportParams {
    type Error = ApiError;
    fn try_from(r: pb::ExportRequest) -> Result<Self, ApiError> {
        ExportParams::new(r.selector, r.if_none_match)
    }
}

impl TryFrom<pb::IngestFactsRequest> for Ingest {
    type Error = ApiError;
    fn try_from(r: pb::IngestFactsRequest) -> Result<Self, ApiError> {
        let ctx = ChangeContext {
            reason: r.reason,
            ticket: r.ticket,
            origin: r.origin.clone(),
        };
        Ingest::new(r.hosts, r.origin, duration(r.expected_interval)?, ctx)
    }
}

#[tonic::async_trait]
impl ExportService for ExportApi {
    type InventoryStream = ChunkStream;

    async fn inventory(
        &self,
        req: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::InventoryStream>, Status> {
        let who = self
            .0
            .authorize(&req, Permission::Read, "export", ResourceKind::Device, "")?;
        let params: ExportParams =
            self.0
                .input(&who, "export", (ResourceKind::Device, ""), req.into_inner())?;
        // Two chunks in flight: the producer stays just ahead of a slow reader, and stops
        // (its send fails) when the client goes away.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let inventory = std::sync::Arc::clone(&self.0.inventory);
        tokio::spawn(async move { export::run(&inventory, params, tx).await });
        let stream = ReceiverStream::new(rx).map(|r| r.map_err(to_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ingest_facts(
        &self,
        req: Request<pb::IngestFactsRequest>,
    ) -> Result<Response<pb::IngestFactsResponse>, Status> {
        let first = req
            .get_ref()
            .hosts
            .first()
            .map(|h| h.device.clone())
            .unwrap_or_default();
        let who = self.0.authorize(
            &req,
            Permission::Write,
            "ingest-facts",
            ResourceKind::Device,
            &first,
        )?;
        let target = (ResourceKind::Device, first.as_str());
        let params: Ingest = self
            .0
            .input(&who, "ingest-facts", target, req.into_inner())?;
        let hosts = ingest::ingest(&self.0.inventory, &who, params)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::IngestFactsResponse { hosts }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::invalid_field as field;
    use super::*;

    #[test]
    fn request_shape_failures_name_the_field() {
        let e = ExportParams::try_from(pb::ExportRequest {
            selector: "role ~ db".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "selector");
        let e = Ingest::try_from(pb::IngestFactsRequest::default()).unwrap_err();
        assert_eq!(field(e), "hosts");
        let e = Ingest::try_from(pb::IngestFactsRequest {
            hosts: vec![pb::HostFacts {
                device: "web-01".into(),
                facts: Some(pb::Facts::default()),
                collected_at: None,
            }],
            expected_interval: Some(pbjson_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(field(e), "expected_interval");
    }
}
