//! CampaignService handlers: authorize (viewers read and watch, operators create and run,
//! approvers approve and promote), convert the request into an engine `Command` (TryFrom at
//! the edge), send it, convert the reply back. Refusals are audited by the engine.

use std::pin::Pin;

use futures::Stream;
use muster::pb::{self, ResourceKind, campaign_service_server::CampaignService};
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::{Shared, context};
use crate::campaigns::{Campaigns, Command, HostAction, Reply};
use crate::model::{ApiError, Permission};

/// gRPC face of the campaign engine.
#[derive(Debug, Clone)]
pub struct CampaignApi {
    pub shared: Shared,
    pub campaigns: Campaigns,
}

fn campaign(r: Result<Reply, ApiError>) -> Result<Response<pb::CampaignResponse>, Status> {
    match r.map_err(to_status)? {
        Reply::Campaign(c) => Ok(Response::new(*c)),
        _ => Err(to_status(ApiError::Internal(
            "unexpected engine reply".into(),
        ))),
    }
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(to_status(ApiError::invalid(field, "is required")));
    }
    Ok(())
}

impl CampaignApi {
    async fn act(
        &self,
        req: Request<pb::CampaignActionRequest>,
        perm: Permission,
        verb: &str,
        make: fn(String) -> Command,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let name = req.get_ref().name.clone();
        let who = self
            .shared
            .authorize(&req, perm, verb, ResourceKind::Campaign, &name)?;
        required("name", &name)?;
        let r = req.into_inner();
        campaign(
            self.campaigns
                .command(who, context(r.context), make(name))
                .await,
        )
    }

    async fn host(
        &self,
        req: Request<pb::HostActionRequest>,
        action: HostAction,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let name = req.get_ref().name.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            action.verb(),
            ResourceKind::Campaign,
            &name,
        )?;
        let r = req.into_inner();
        required("name", &r.name)?;
        required("host", &r.host)?;
        campaign(
            self.campaigns
                .command(
                    who,
                    context(r.context),
                    Command::Host {
                        action,
                        name: r.name,
                        host: r.host,
                    },
                )
                .await,
        )
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::CampaignProgress, Status>> + Send>>;

#[tonic::async_trait]
impl CampaignService for CampaignApi {
    async fn create(
        &self,
        req: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let name = req
            .get_ref()
            .campaign
            .as_ref()
            .and_then(|c| c.meta.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            "campaign create",
            ResourceKind::Campaign,
            &name,
        )?;
        let r = req.into_inner();
        let c = r
            .campaign
            .ok_or_else(|| to_status(ApiError::invalid("campaign", "is required")))?;
        campaign(
            self.campaigns
                .command(who, context(r.context), Command::Create(Box::new(c)))
                .await,
        )
    }

    async fn plan(
        &self,
        req: Request<pb::PlanCampaignRequest>,
    ) -> Result<Response<pb::PlanCampaignResponse>, Status> {
        let who = self.shared.authorize(
            &req,
            Permission::Read,
            "campaign plan",
            ResourceKind::Campaign,
            &req.get_ref().name,
        )?;
        let r = req.into_inner();
        if r.name.is_empty() && r.campaign.is_none() {
            return Err(to_status(ApiError::invalid(
                "name",
                "give a campaign's name or an inline campaign",
            )));
        }
        let cmd = Command::Plan {
            name: r.name,
            inline: r.campaign.map(Box::new),
        };
        match self
            .campaigns
            .command(who, Default::default(), cmd)
            .await
            .map_err(to_status)?
        {
            Reply::Plan(p) => Ok(Response::new(*p)),
            _ => Err(to_status(ApiError::Internal(
                "unexpected engine reply".into(),
            ))),
        }
    }

    async fn submit(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(req, Permission::Write, "campaign submit", Command::Submit)
            .await
    }

    async fn edit(
        &self,
        req: Request<pb::EditCampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let name = req.get_ref().name.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Write,
            "campaign edit",
            ResourceKind::Campaign,
            &name,
        )?;
        required("name", &name)?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| to_status(ApiError::invalid("spec", "is required")))?;
        campaign(
            self.campaigns
                .command(who, context(r.context), Command::Edit(name, Box::new(spec)))
                .await,
        )
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveCampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let name = req.get_ref().name.clone();
        let who = self.shared.authorize(
            &req,
            Permission::Approve,
            "campaign approve",
            ResourceKind::Campaign,
            &name,
        )?;
        let r = req.into_inner();
        required("name", &r.name)?;
        required("digest", &r.digest)?;
        campaign(
            self.campaigns
                .command(
                    who,
                    context(r.context),
                    Command::Approve {
                        name: r.name,
                        digest: r.digest,
                    },
                )
                .await,
        )
    }

    async fn promote(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(
            req,
            Permission::Approve,
            "campaign promote",
            Command::Promote,
        )
        .await
    }

    async fn start(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(req, Permission::Write, "campaign start", Command::Start)
            .await
    }

    async fn pause(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(req, Permission::Write, "campaign pause", Command::Pause)
            .await
    }

    async fn resume(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(req, Permission::Write, "campaign resume", Command::Resume)
            .await
    }

    async fn abort(
        &self,
        req: Request<pb::CampaignActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.act(req, Permission::Write, "campaign abort", Command::Abort)
            .await
    }

    async fn get(
        &self,
        req: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let who = self.shared.authorize(
            &req,
            Permission::Read,
            "campaign get",
            ResourceKind::Campaign,
            &req.get_ref().name,
        )?;
        let r = req.into_inner();
        required("name", &r.name)?;
        campaign(
            self.campaigns
                .command(
                    who,
                    Default::default(),
                    Command::Get {
                        name: r.name,
                        summary_only: r.summary_only,
                    },
                )
                .await,
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        self.shared.authorize(
            &req,
            Permission::Read,
            "campaign list",
            ResourceKind::Campaign,
            "",
        )?;
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: self.campaigns.summaries().values().cloned().collect(),
        }))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        req: Request<pb::WatchCampaignRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = req.get_ref().name.clone();
        self.shared.authorize(
            &req,
            Permission::Read,
            "campaign watch",
            ResourceKind::Campaign,
            &name,
        )?;
        required("name", &name)?;
        let mut rx = self.campaigns.subscribe();
        let first = self
            .campaigns
            .summaries()
            .get(&name)
            .cloned()
            .ok_or_else(|| {
                to_status(ApiError::NotFound {
                    kind: "campaign",
                    name: name.clone(),
                })
            })?;
        let campaigns = self.campaigns.clone();
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::CampaignProgress, Status>>(64);
        tokio::spawn(async move {
            let done = crate::campaigns::view::terminal(first.state);
            let first = pb::CampaignProgress {
                summary: Some(first),
                transition: None,
            };
            if tx.send(Ok(first)).await.is_err() || done {
                return;
            }
            loop {
                let p = match rx.recv().await {
                    Ok(ev) if ev.0 == name => ev.1.clone(),
                    Ok(_) => continue,
                    // Too slow to see every transition: resynchronise with the summary.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match campaigns.summaries().get(&name).cloned() {
                            Some(s) => pb::CampaignProgress {
                                summary: Some(s),
                                transition: None,
                            },
                            None => return,
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let end = p
                    .summary
                    .as_ref()
                    .is_some_and(|s| crate::campaigns::view::terminal(s.state));
                if tx.send(Ok(p)).await.is_err() || end {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report(
        &self,
        req: Request<pb::CampaignReportRequest>,
    ) -> Result<Response<pb::CampaignReport>, Status> {
        let who = self.shared.authorize(
            &req,
            Permission::Read,
            "campaign report",
            ResourceKind::Campaign,
            &req.get_ref().name,
        )?;
        let name = req.into_inner().name;
        required("name", &name)?;
        match self
            .campaigns
            .command(who, Default::default(), Command::Report(name))
            .await
            .map_err(to_status)?
        {
            Reply::Report(r) => Ok(Response::new(*r)),
            _ => Err(to_status(ApiError::Internal(
                "unexpected engine reply".into(),
            ))),
        }
    }

    async fn host_retry(
        &self,
        req: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.host(req, HostAction::Retry).await
    }

    async fn host_mark_failed(
        &self,
        req: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.host(req, HostAction::MarkFailed).await
    }

    async fn host_rollback(
        &self,
        req: Request<pb::HostActionRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.host(req, HostAction::Rollback).await
    }

    async fn step_output(
        &self,
        req: Request<pb::StepOutputRequest>,
    ) -> Result<Response<pb::StepOutputResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.shared.authorize(
            &req,
            Permission::Read,
            "campaign output",
            ResourceKind::Campaign,
            &name,
        )?;
        let r = req.into_inner();
        required("name", &r.name)?;
        required("intent", &r.intent)?;
        crate::campaigns::view::step_output(self.campaigns.inventory(), &r.name, &r.intent)
            .map(Response::new)
            .map_err(to_status)
    }
}
