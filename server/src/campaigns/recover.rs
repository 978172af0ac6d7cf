//! Steps interrupted by a restart, asked of their hosts (notes §4.7, "recoverable remote
//! execution"): an `ssh` step that is not idempotent ran detached under its intent id, so
//! the executor can read how it ended, or wait for it, without running it again. A finished
//! run is recorded like any result; a host that cannot tell puts the host in NEEDS_ATTENTION
//! and a running campaign PAUSED, as before recovery existed.

use std::time::Duration;

use super::engine::{Engine, SYSTEM};
use super::executor::{Outcome, Recovered, StepKind, StepRequest, StepResult};
use super::records::Intent;
use crate::campaign::CampaignState;
use crate::campaign::spec::{Step, StepAction};
use crate::campaign::state::{CampaignEvent, PauseReason};
use crate::inventory::ChangeContext;

/// The executor's request for `step` under `intent` (None: not an executor step).
pub fn step_request(intent: &Intent, step: &Step, timeout: Duration) -> Option<StepRequest> {
    let kind = match &step.action {
        StepAction::Ssh(c) => StepKind::Ssh(c.clone()),
        StepAction::Reboot => StepKind::Reboot,
        StepAction::WaitReport(_) => return None,
    };
    Some(StepRequest {
        campaign: intent.campaign.clone(),
        host: intent.host.clone(),
        step: step.name.clone(),
        kind,
        intent_id: intent.intent_id.clone(),
        attempt: intent.attempt,
        timeout,
        deadline_unix: intent.deadline,
    })
}

impl Engine {
    /// Queues a look-up of host `i`'s interrupted step; `fallback` is the NEEDS_ATTENTION
    /// message if the host cannot tell. False when there is nothing to ask about.
    pub fn ask_host(&mut self, name: &str, i: usize, intent: &Intent, step: &Step) -> bool {
        let now = self.now();
        if self.parts.lease.token().is_none() {
            return false;
        }
        // The time left to its deadline (the host's own `timeout` ends it there).
        let left = Duration::from_secs(u64::try_from(intent.deadline - now).unwrap_or(0));
        let Some(req) = step_request(intent, step, left) else {
            return false;
        };
        let Some(run) = self.runs.get_mut(name) else {
            return false;
        };
        let Some(h) = run.hosts.get_mut(i) else {
            return false;
        };
        h.in_flight = true;
        h.recovering_since = now;
        self.round.recover.push((run.id.clone(), i, req));
        true
    }

    /// The host's answer about an interrupted step.
    pub fn recovered(&mut self, campaign_id: &str, i: usize, intent_id: &str, r: Recovered) {
        let now = self.now();
        let Some(run) = self.runs.values_mut().find(|r| r.id == campaign_id) else {
            return;
        };
        let name = run.name.clone();
        let Some(h) = run.hosts.get_mut(i) else {
            return;
        };
        h.recovering_since = 0;
        let unknown = match r {
            Recovered::Finished(result) => {
                return self.step_finished(campaign_id, i, intent_id, result);
            }
            Recovered::Unknown(why) => why,
        };
        let Some(intent) = h.data.intent.clone().filter(|x| x.intent_id == intent_id) else {
            return;
        };
        let fallback = run
            .spec
            .as_ref()
            .map(|s| super::resume::recover(s, &intent, "", now))
            .and_then(|d| match d {
                super::resume::Recovery::AskHost(m) | super::resume::Recovery::Attention(m) => {
                    Some(m)
                }
                _ => None,
            })
            .unwrap_or_else(|| "the server restarted while this step was running".into());
        let message = format!("{fallback} (the host could not tell: {unknown})");
        let running = matches!(run.state, CampaignState::Running);
        self.step_finished(
            campaign_id,
            i,
            intent_id,
            StepResult::of(Outcome::Unknown(message.clone())),
        );
        if running {
            let _ = self.campaign_event(
                &name,
                CampaignEvent::Pause(PauseReason::NeedsAttention(format!(
                    "resumed after a restart with a host needing attention: {}: {message}",
                    intent.host
                ))),
                SYSTEM,
                "campaign pause",
                &ChangeContext {
                    reason: "recovery after restart".into(),
                    ..Default::default()
                },
            );
        }
    }
}
