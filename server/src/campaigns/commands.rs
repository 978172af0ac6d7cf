//! Operator commands: validation, the pure transition, the audited write. Refusals are
//! audited here (one place for every campaign verb) and change nothing.

use muster::pb::{self, ResourceKind};

use super::engine::{Command, Engine, HostAction, HostRt, Reply, Run};
use super::observe::Expectations;
use super::records::{CampaignData, HostData};
use crate::campaign::approval::{Actor, ApprovalOutcome, Approvals};
use crate::campaign::host::{HostEvent, HostState};
use crate::campaign::plan::{self, PlanInput};
use crate::campaign::state::{CampaignEvent, HaltReason, PauseReason, Resumer};
use crate::campaign::{CampaignSpec, CampaignState, Plan, digest, render};
use crate::inventory::{ChangeContext, refusal_kind};
use crate::model::{ApiError, Principal, timestamp};

/// A device that has not reported for this long is silent at plan time (a day: agentless
/// facts are refreshed daily; agents report every minute and go UNKNOWN long before).
const SILENT_AFTER: i64 = 24 * 3600;

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        kind: "campaign",
        name: name.to_string(),
    }
}

fn actor(who: &Principal) -> Actor {
    Actor {
        name: who.name.clone(),
        roles: vec![who.role.as_str().to_string()],
    }
}

fn approvals(d: &CampaignData) -> Approvals {
    Approvals {
        authors: d.authors.iter().cloned().collect(),
        approvals: d
            .approvals
            .iter()
            .map(|(by, digest)| crate::campaign::approval::Approval {
                by: by.clone(),
                digest: digest.clone(),
            })
            .collect(),
    }
}

fn store_approvals(d: &mut CampaignData, a: &Approvals) {
    d.authors = a.authors.iter().cloned().collect();
    d.approvals = a
        .approvals
        .iter()
        .map(|x| (x.by.clone(), x.digest.clone()))
        .collect();
}

impl Engine {
    /// Runs a command; a refusal is audited.
    pub fn command(
        &mut self,
        who: &Principal,
        ctx: &ChangeContext,
        cmd: Command,
    ) -> Result<Reply, ApiError> {
        let verb = cmd.verb();
        let name = cmd.name();
        let r = match verb {
            Some(_) => ctx.check().and_then(|()| self.write_command(who, ctx, cmd)),
            None => self.read_command(cmd),
        };
        if let (Some(verb), Err(e)) = (verb, &r)
            && !matches!(
                e,
                ApiError::Internal(_) | ApiError::Unavailable(_) | ApiError::ShuttingDown
            )
        {
            self.inventory.record_refusal(
                &who.name,
                verb,
                (ResourceKind::Campaign, &name),
                ctx,
                refusal_kind(e),
                &e.to_string(),
            );
        }
        r
    }

    fn read_command(&mut self, cmd: Command) -> Result<Reply, ApiError> {
        match cmd {
            Command::Get { name, summary_only } => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                Ok(Reply::Campaign(Box::new(super::view::response(
                    run,
                    !summary_only,
                ))))
            }
            Command::Report(name) => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                Ok(Reply::Report(Box::new(super::view::report(run))))
            }
            Command::Plan { name, inline } => {
                if let Some(c) = inline {
                    let spec_pb = c.spec.clone().unwrap_or_default();
                    let (spec, plan) = self.fresh_plan(&spec_pb)?;
                    let d = digest::digest(&spec_pb, &plan)?;
                    let n = c.meta.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                    return Ok(plan_reply(&n, &spec, &plan, d, false));
                }
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                if let (Some(spec), Some(plan)) = (run.spec.clone(), run.plan.clone()) {
                    return Ok(plan_reply(&name, &spec, &plan, run.digest.clone(), true));
                }
                let spec_pb = run.resource.spec.clone().unwrap_or_default();
                let (spec, plan) = self.fresh_plan(&spec_pb)?;
                let d = digest::digest(&spec_pb, &plan)?;
                Ok(plan_reply(&name, &spec, &plan, d, false))
            }
            _ => Err(ApiError::Internal("not a read".into())),
        }
    }

    /// Parses the spec against the windows now and plans it over the fleet.
    fn fresh_plan(&mut self, spec_pb: &pb::CampaignSpec) -> Result<(CampaignSpec, Plan), ApiError> {
        // One pass over the devices gives both the candidates and the labels the engine's
        // calendar keeps (rebuilding the calendar through `calendar()` listed them again).
        let now = self.now();
        let (devices, labels) = super::fleet::candidates(&self.inventory, &*self.parts.observer)?;
        let calendar = std::sync::Arc::new(super::fleet::calendar(
            &self.inventory,
            now,
            super::engine::CALENDAR_EXTRA,
        )?);
        self.labels = std::sync::Arc::new(labels);
        self.calendar = Some((std::sync::Arc::clone(&calendar), now));
        let spec = CampaignSpec::parse(spec_pb, &calendar, now).map_err(prefixed)?;
        let plan = plan::plan(PlanInput {
            spec: &spec,
            devices: &devices,
            calendar: &calendar,
            now,
            silent_after: SILENT_AFTER,
        })
        .map_err(prefixed)?;
        Ok((spec, plan))
    }

    fn respond(&self, name: &str) -> Result<Reply, ApiError> {
        let run = self.runs.get(name).ok_or_else(|| not_found(name))?;
        Ok(Reply::Campaign(Box::new(super::view::response(run, false))))
    }

    fn write_command(
        &mut self,
        who: &Principal,
        ctx: &ChangeContext,
        cmd: Command,
    ) -> Result<Reply, ApiError> {
        let verb = cmd.verb().unwrap_or_default();
        match cmd {
            Command::Create(c) => self.create(who, ctx, *c),
            Command::Submit(name) => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                crate::campaign::state::apply(&run.state, CampaignEvent::Submit)?;
                let spec_pb = run.resource.spec.clone().unwrap_or_default();
                let (spec, plan) = self.fresh_plan(&spec_pb)?;
                let d = digest::digest(&spec_pb, &plan)?;
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                run.expect = Expectations::new(spec.desired.as_ref(), &spec.verify);
                // A host without a record loads as PENDING, so a first submit writes no host
                // records (10,000 of them were most of its time); only records an earlier plan
                // left (a resubmit after an edit) are removed.
                let stale = self
                    .inventory
                    .store()
                    .aux_scan(&super::records::hosts_prefix(&run.id))
                    .map_err(crate::inventory::store_error)?;
                self.round
                    .puts
                    .extend(stale.into_iter().map(|(k, _)| (k, None)));
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                run.hosts = (0..plan.hosts.len()).map(|_| pending_host()).collect();
                run.plan_pb = Some(plan.to_pb());
                run.plan = Some(plan);
                run.spec = Some(spec);
                run.digest = d;
                run.data.approvals.clear();
                run.data.soak.clear();
                self.campaign_event(&name, CampaignEvent::Submit, &who.name, verb, ctx)?;
                self.queue_hosts(&name);
                self.respond(&name)
            }
            Command::Edit(name, spec_pb) => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                let next = crate::campaign::state::apply(&run.state, CampaignEvent::Edit)?;
                let calendar = self.calendar()?;
                CampaignSpec::parse(&spec_pb, &calendar, self.now()).map_err(prefixed)?;
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                let mut a = approvals(&run.data);
                a.edited(&who.name);
                store_approvals(&mut run.data, &a);
                run.resource.spec = Some(*spec_pb);
                run.spec = None;
                run.plan = None;
                run.plan_pb = None;
                run.digest.clear();
                run.hosts.clear();
                if run.state == next {
                    self.queue_resource(&name, &who.name, verb, ctx);
                } else {
                    self.campaign_event(&name, CampaignEvent::Edit, &who.name, verb, ctx)?;
                }
                self.respond(&name)
            }
            Command::Approve { name, digest } => {
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                if run.state != CampaignState::AwaitingApproval {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the campaign is {}, not awaiting approval",
                        run.state.to_pb().as_str_name()
                    )));
                }
                let policy = run
                    .spec
                    .as_ref()
                    .map(|s| s.approval.clone())
                    .ok_or_else(|| ApiError::FailedPrecondition("no frozen plan".into()))?;
                let mut a = approvals(&run.data);
                let current = run.digest.clone();
                let outcome = a.approve(&policy, &actor(who), &digest, &current)?;
                store_approvals(&mut run.data, &a);
                match outcome {
                    ApprovalOutcome::Complete => self.campaign_event(
                        &name,
                        CampaignEvent::ApprovalsComplete,
                        &who.name,
                        verb,
                        ctx,
                    )?,
                    ApprovalOutcome::Pending(_) => self.queue_resource(&name, &who.name, verb, ctx),
                }
                self.respond(&name)
            }
            Command::Promote(name) => {
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                let policy = run
                    .spec
                    .as_ref()
                    .map(|s| s.approval.clone())
                    .ok_or_else(|| ApiError::FailedPrecondition("no frozen plan".into()))?;
                approvals(&run.data).check_promoter(&policy, &actor(who))?;
                crate::campaign::state::apply(&run.state, CampaignEvent::Promote)?;
                run.data.promoted = true;
                run.data.promoted_by = who.name.clone();
                self.campaign_event(&name, CampaignEvent::Promote, &who.name, verb, ctx)?;
                self.respond(&name)
            }
            Command::Start(name) => self.simple(&name, CampaignEvent::Start, who, verb, ctx),
            Command::Pause(name) => self.simple(
                &name,
                CampaignEvent::Pause(PauseReason::Person(who.name.clone())),
                who,
                verb,
                ctx,
            ),
            Command::Resume(name) => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                if matches!(
                    run.state,
                    CampaignState::Halted(
                        HaltReason::CanaryFailed { .. } | HaltReason::DirtySoak { .. }
                    )
                ) && let Some(s) = &run.spec
                {
                    approvals(&run.data).check_promoter(&s.approval, &actor(who))?;
                }
                self.simple(
                    &name,
                    CampaignEvent::Resume(Resumer::Person(who.name.clone())),
                    who,
                    verb,
                    ctx,
                )
            }
            Command::Abort(name) => self.simple(&name, CampaignEvent::Abort, who, verb, ctx),
            Command::Host { action, name, host } => {
                let run = self.runs.get(&name).ok_or_else(|| not_found(&name))?;
                if run.state.is_terminal() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the campaign is {}; its hosts can no longer change",
                        run.state.to_pb().as_str_name()
                    )));
                }
                let i = run
                    .plan
                    .as_ref()
                    .and_then(|p| p.index_of(&host))
                    .ok_or_else(|| {
                        ApiError::invalid("host", format!("{host:?} is not in the campaign's plan"))
                    })?;
                let ev = match action {
                    HostAction::Retry => HostEvent::Retry,
                    HostAction::MarkFailed => HostEvent::MarkFailed {
                        cause: format!("marked failed by {}", who.name),
                    },
                    HostAction::Rollback => HostEvent::Rollback,
                };
                let from = run.hosts[i].state.to_pb().as_str_name();
                let why = if ctx.reason.is_empty() {
                    format!("{} by {}", action.verb(), who.name)
                } else {
                    ctx.reason.clone()
                };
                self.host_event(&name, i, ev, &who.name, &why)?;
                let run = self.runs.get_mut(&name).ok_or_else(|| not_found(&name))?;
                let to = run.hosts[i].state.to_pb().as_str_name();
                run.hosts[i].data.intent = None;
                self.queue_hosts(&name);
                self.inventory.record_accepted_action(
                    &who.name,
                    action.verb(),
                    (ResourceKind::Campaign, &name),
                    ctx,
                    &format!("host {host}: {from} → {to}"),
                );
                self.respond(&name)
            }
            Command::Plan { .. } | Command::Get { .. } | Command::Report(_) => {
                Err(ApiError::Internal("not a write".into()))
            }
        }
    }

    fn simple(
        &mut self,
        name: &str,
        ev: CampaignEvent,
        who: &Principal,
        verb: &str,
        ctx: &ChangeContext,
    ) -> Result<Reply, ApiError> {
        if !self.runs.contains_key(name) {
            return Err(not_found(name));
        }
        self.campaign_event(name, ev, &who.name, verb, ctx)?;
        self.respond(name)
    }

    fn create(
        &mut self,
        who: &Principal,
        ctx: &ChangeContext,
        c: pb::Campaign,
    ) -> Result<Reply, ApiError> {
        let meta = c.meta.clone().unwrap_or_default();
        muster::names::validate_name("meta.name", &meta.name)?;
        muster::names::validate_labels("meta.labels", meta.labels.iter())?;
        if self.runs.contains_key(&meta.name) {
            return Err(ApiError::AlreadyExists {
                kind: "campaign",
                name: meta.name,
            });
        }
        let spec_pb = c
            .spec
            .clone()
            .ok_or_else(|| ApiError::invalid("spec", "is required"))?;
        let calendar = self.calendar()?;
        CampaignSpec::parse(&spec_pb, &calendar, self.now()).map_err(prefixed)?;
        let now = self.now_nanos();
        let mut resource = pb::Campaign {
            meta: Some(pb::ObjectMeta {
                id: ulid::Ulid::new().to_string(),
                name: meta.name.clone(),
                labels: meta.labels.clone(),
                created_at: Some(timestamp(now)),
                created_by: who.name.clone(),
                updated_at: Some(timestamp(now)),
                updated_by: who.name.clone(),
                ..Default::default()
            }),
            spec: Some(spec_pb),
            status: None,
        };
        resource.status = None;
        let id = resource
            .meta
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        let run = Run {
            id,
            name: meta.name.clone(),
            revision: 0,
            resource,
            spec: None,
            plan: None,
            plan_pb: None,
            digest: String::new(),
            data: CampaignData {
                state: (&CampaignState::Draft).into(),
                authors: vec![who.name.clone()],
                approvals: vec![],
                promoted: false,
                promoted_by: String::new(),
                soak: vec![],
                transitions: vec![],
            },
            state: CampaignState::Draft,
            hosts: vec![],
            expect: Expectations::default(),
            waiting: String::new(),
            wave: None,
            window_closes: None,
            message: String::new(),
            changed: true,
        };
        self.runs.insert(meta.name.clone(), run);
        self.queue_resource(&meta.name, &who.name, "campaign create", ctx);
        self.respond(&meta.name)
    }
}

fn pending_host() -> HostRt {
    HostRt {
        data: HostData::pending(),
        state: HostState::Pending,
        in_flight: false,
        recovering_since: 0,
        dirty: false,
    }
}

/// Spec field errors name the field as the manifest writes it (`spec.strategy...`).
fn prefixed(e: crate::campaign::CampaignError) -> ApiError {
    match e {
        crate::campaign::CampaignError::Invalid { field, problem } => ApiError::InvalidArgument {
            field: format!("spec.{field}"),
            problem,
        },
        other => other.into(),
    }
}

fn plan_reply(name: &str, spec: &CampaignSpec, plan: &Plan, digest: String, frozen: bool) -> Reply {
    Reply::Plan(Box::new(pb::PlanCampaignResponse {
        plan: Some(plan.to_pb()),
        text: render::render_plan(name, spec, plan, &digest),
        digest,
        frozen,
    }))
}
