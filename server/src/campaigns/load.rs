//! Start-up: every stored campaign is loaded; non-terminal ones resume (notes §4.7). Finished
//! hosts are never rerun; an interrupted observation reruns; an interrupted step reruns only
//! if idempotent, otherwise it is looked up on the host (`recover.rs`) and, if the host
//! cannot tell, the host goes NEEDS_ATTENTION and a running campaign PAUSED saying why
//! (`resume::recover`).

use muster::pb::{self, ResourceKind, resource::Resource as R};
use prost::Message;

use super::engine::{Engine, HostRt, Run, SYSTEM};
use super::observe::Expectations;
use super::records::{self, HostData, HostStateRec, Intent};
use super::resume::{Recovery, recover};
use crate::campaign::host::{HostEvent, HostState};
use crate::campaign::state::{CampaignEvent, PauseReason};
use crate::campaign::{CampaignSpec, CampaignState, Plan};
use crate::inventory::ChangeContext;
use crate::model::{ApiError, kind_id};
use crate::store::ListQuery;

impl Engine {
    /// Loads every campaign and resumes the non-terminal ones.
    pub fn load(&mut self) -> Result<(), ApiError> {
        let store = std::sync::Arc::clone(self.inventory.store());
        let page = store
            .list(&ListQuery {
                kind: kind_id(ResourceKind::Campaign),
                labels: Default::default(),
                fields: Default::default(),
                after_id: None,
                limit: 1_000_000,
            })
            .map_err(crate::inventory::store_error)?;
        for o in page.objects {
            let r = pb::Resource::decode(o.body.as_slice())
                .map_err(|e| ApiError::Internal(format!("corrupt campaign: {e}")))?;
            let Some(R::Campaign(c)) = r.resource else {
                continue;
            };
            let Some(raw) = store
                .aux_get(&records::campaign_key(&o.id))
                .map_err(crate::inventory::store_error)?
            else {
                tracing::warn!(campaign = %o.name, "campaign without its record; left out");
                continue;
            };
            let data = records::decode_campaign(&raw)?;
            let state: CampaignState = data.state.clone().into();
            let status = c.status.clone().unwrap_or_default();
            let spec = c.spec.as_ref().and_then(|s| CampaignSpec::try_from(s).ok());
            let plan = status.plan.as_ref().and_then(|p| Plan::from_pb(p).ok());
            let mut hosts: Vec<HostRt> = plan
                .as_ref()
                .map(|p| {
                    (0..p.hosts.len())
                        .map(|_| HostRt {
                            data: HostData::pending(),
                            state: HostState::Pending,
                            in_flight: false,
                            recovering_since: 0,
                            dirty: false,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !hosts.is_empty() {
                for (k, v) in store
                    .aux_scan(&records::hosts_prefix(&o.id))
                    .map_err(crate::inventory::store_error)?
                {
                    let Some(i) = records::host_index(&k) else {
                        continue;
                    };
                    if let Some(h) = hosts.get_mut(i) {
                        h.data = records::decode_host(&v)?;
                        h.state = h.data.state.clone().into();
                    }
                }
            }
            let expect = spec
                .as_ref()
                .map(|s| Expectations::new(s.desired.as_ref(), &s.verify))
                .unwrap_or_default();
            let run = Run {
                id: o.id.clone(),
                name: o.name.clone(),
                revision: o.revision,
                resource: c.clone(),
                spec,
                plan_pb: status.plan.clone(),
                plan,
                digest: status.digest.clone(),
                data,
                state,
                hosts,
                expect,
                waiting: String::new(),
                wave: None,
                window_closes: None,
                message: status.message.clone(),
                changed: true,
            };
            let name = run.name.clone();
            let resumable = !run.state.is_terminal() && run.spec.is_some();
            self.runs.insert(name.clone(), run);
            if resumable {
                self.recover_run(&name);
            }
        }
        Ok(())
    }

    /// Applies `resume::recover` to every host with an intent and no outcome.
    fn recover_run(&mut self, name: &str) {
        let now = self.now();
        let mut attention = Vec::new();
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        let Some(spec) = run.spec.clone() else {
            return;
        };
        let observer = std::sync::Arc::clone(&self.parts.observer);
        let mut events: Vec<(usize, HostEvent, String)> = Vec::new();
        let mut ask: Vec<(usize, Intent, String)> = Vec::new();
        for (i, h) in run.hosts.iter_mut().enumerate() {
            let Some(intent) = h.data.intent.clone() else {
                continue;
            };
            let boot_now = observer
                .observe(&intent.host, &Expectations::default())
                .ok()
                .flatten()
                .map(|o| o.boot_id)
                .unwrap_or_default();
            match recover(&spec, &intent, &boot_now, now) {
                Recovery::Observe => {
                    // A reboot in flight is never reissued: only its new boot id is awaited.
                    let mut intent = intent;
                    intent.reboot_done = true;
                    h.data.intent = Some(intent);
                    h.dirty = true;
                }
                Recovery::Rerun => {
                    h.data.intent = None;
                    h.dirty = true;
                }
                Recovery::AskHost(msg) => ask.push((i, intent, msg)),
                Recovery::Attention(msg) => {
                    h.data.intent = None;
                    h.dirty = true;
                    attention.push(format!("{}: {msg}", intent.host));
                    events.push((i, HostEvent::OutcomeUnknown { message: msg }, intent.host));
                }
            }
        }
        for (i, intent, msg) in ask {
            let step = super::drive::stage_step(&spec, intent.stage).cloned();
            let asked = step.is_some_and(|s| self.ask_host(name, i, &intent, &s));
            if !asked {
                if let Some(h) = self.runs.get_mut(name).and_then(|r| r.hosts.get_mut(i)) {
                    h.data.intent = None;
                    h.dirty = true;
                }
                attention.push(format!("{}: {msg}", intent.host));
                events.push((i, HostEvent::OutcomeUnknown { message: msg }, intent.host));
            }
        }
        for (i, ev, _host) in events {
            let _ = self.host_event(name, i, ev, SYSTEM, "recovered after a restart");
        }
        self.queue_hosts(name);
        let Some(run) = self.runs.get(name) else {
            return;
        };
        if !attention.is_empty() && matches!(run.state, CampaignState::Running) {
            let msg = format!(
                "resumed after a restart with {} host(s) needing attention: {}",
                attention.len(),
                attention.join("; ")
            );
            let _ = self.campaign_event(
                name,
                CampaignEvent::Pause(PauseReason::NeedsAttention(msg)),
                SYSTEM,
                "campaign pause",
                &ChangeContext {
                    reason: "recovery after restart".into(),
                    ..Default::default()
                },
            );
        }
        if let Some(run) = self.runs.get(name)
            && run
                .hosts
                .iter()
                .any(|h| matches!(h.data.state, HostStateRec::Running(_)))
        {
            tracing::info!(campaign = name, "campaign resumed");
        }
    }
}
