//! Driving hosts and scheduling: the engine's side of `campaign::host`, `campaign::state`,
//! `campaign::schedule` and `campaign::soak`. Every state change goes through
//! [`Engine::host_event`] / [`Engine::campaign_event`], which apply the pure transition,
//! record it and queue the durable write.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::engine::{Engine, SYSTEM};
use super::executor::StepResult;
use super::observe::{Expectations, Observation, health_rank};
use super::records::{self, Intent, SoakRec, StageRec, StepRec, TransitionRec, push_bounded};
use crate::campaign::CampaignState;
use crate::campaign::error::CampaignError;
use crate::campaign::host::{self, HostEvent, HostShape, HostState};
use crate::campaign::schedule::{self, HostRecord, StepFit, Tick, Waiting};
use crate::campaign::soak::{self, Baseline, CanarySoak, SoakReport, SoakVerdict};
use crate::campaign::spec::{Step, StepAction};
use crate::campaign::state::{self, CampaignEvent, PauseReason, Resumer};
use crate::inventory::ChangeContext;

/// How long past a step's deadline the engine waits for the executor before calling the
/// outcome unknown.
const EXECUTOR_GRACE: i64 = 60;

mod gates;

fn state_name(s: &HostState) -> String {
    s.to_pb()
        .as_str_name()
        .trim_start_matches("HOST_")
        .to_string()
}

impl Engine {
    /// Applies a host event: transition, record, broadcast. Wrong-state events are refused.
    pub fn host_event(
        &mut self,
        name: &str,
        i: usize,
        ev: HostEvent,
        who: &str,
        why: &str,
    ) -> Result<(), CampaignError> {
        let now = self.now_nanos();
        let run = self
            .runs
            .get_mut(name)
            .ok_or_else(|| CampaignError::precondition("no such campaign"))?;
        let spec = run
            .spec
            .as_ref()
            .ok_or_else(|| CampaignError::precondition("the campaign has no valid spec"))?;
        let shape = HostShape {
            steps: spec.steps.len() as u32,
            rollback_steps: spec.rollback.len() as u32,
        };
        let h = run
            .hosts
            .get_mut(i)
            .ok_or_else(|| CampaignError::precondition("no such host"))?;
        let next = host::apply(&h.state, ev, shape)?;
        let t = TransitionRec {
            at_nanos: now,
            from: state_name(&h.state),
            to: state_name(&next),
            why: why.to_string(),
            principal: who.to_string(),
        };
        if matches!(h.state, HostState::Pending) {
            h.data.started_nanos = now;
        }
        if next.is_terminal() {
            h.data.finished_nanos = now;
        }
        let from = std::mem::replace(&mut h.state, next);
        h.data.state = (&h.state).into();
        push_bounded(
            &mut h.data.transitions,
            t.clone(),
            records::MAX_HOST_TRANSITIONS,
        );
        h.dirty = true;
        run.changed = true;
        let host = run
            .plan
            .as_ref()
            .map(|p| p.hosts[i].name.clone())
            .unwrap_or_default();
        let run = &self.runs[name];
        self.broadcast(run, &t, &host);
        let to = run.hosts[i].state.clone();
        self.overlay_host(name, i, &from, &to);
        Ok(())
    }

    /// Applies a campaign event, records it and queues the audited resource write.
    pub fn campaign_event(
        &mut self,
        name: &str,
        ev: CampaignEvent,
        who: &str,
        verb: &str,
        ctx: &ChangeContext,
    ) -> Result<(), CampaignError> {
        let now = self.now_nanos();
        let run = self
            .runs
            .get_mut(name)
            .ok_or_else(|| CampaignError::precondition("no such campaign"))?;
        let why = match &ev {
            CampaignEvent::Pause(r) => pause_text(r),
            CampaignEvent::Halt(r) => halt_text(r),
            _ => ctx.reason.clone(),
        };
        let next = state::apply(&run.state, ev)?;
        let t = TransitionRec {
            at_nanos: now,
            from: run.state.to_pb().as_str_name().to_string(),
            to: next.to_pb().as_str_name().to_string(),
            why: why.clone(),
            principal: who.to_string(),
        };
        run.message = why;
        run.state = next;
        run.data.state = (&run.state).into();
        push_bounded(
            &mut run.data.transitions,
            t.clone(),
            records::MAX_CAMPAIGN_TRANSITIONS,
        );
        let run = &self.runs[name];
        self.broadcast(run, &t, "");
        self.queue_resource(name, who, verb, ctx);
        self.overlay_campaign(name);
        Ok(())
    }

    /// A step's result came back.
    pub fn step_finished(&mut self, campaign_id: &str, i: usize, intent_id: &str, r: StepResult) {
        let now = self.now_nanos();
        let Some(name) = self
            .runs
            .values()
            .find(|r| r.id == campaign_id)
            .map(|r| r.name.clone())
        else {
            return;
        };
        let run = self.runs.get_mut(&name).expect("found above");
        let Some(h) = run.hosts.get_mut(i) else {
            return;
        };
        // A late answer for an intent already settled (deadline passed, restart) is dropped.
        let Some(intent) = h.data.intent.clone().filter(|x| x.intent_id == intent_id) else {
            return;
        };
        if !h.in_flight {
            return;
        }
        h.in_flight = false;
        let step = run
            .spec
            .as_ref()
            .and_then(|s| stage_step(s, intent.stage))
            .cloned();
        let code = match &r.outcome {
            super::executor::Outcome::Exited(c) => *c,
            _ => -1,
        };
        push_bounded(
            &mut h.data.steps,
            StepRec {
                stage: intent.stage,
                name: step.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                attempt: intent.attempt,
                intent_id: intent.intent_id.clone(),
                outcome: r.outcome.code().to_string(),
                exit_code: code,
                detail: r.outcome.describe(),
                started_nanos: intent.since_nanos,
                ended_nanos: now,
                stdout: r.stdout.excerpt(records::EXCERPT_BYTES),
                stderr: r.stderr.excerpt(records::EXCERPT_BYTES),
            },
            records::MAX_STEP_HISTORY,
        );
        h.dirty = true;
        if let Ok(b) = records::encode_output(&r.stdout, &r.stderr) {
            self.round
                .puts
                .push((records::output_key(campaign_id, intent_id), Some(b)));
        }
        let step_name = step.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        if r.outcome.succeeded()
            && matches!(step.as_ref().map(|s| &s.action), Some(StepAction::Reboot))
        {
            // Back on SSH; the step ends when a report shows a new boot id.
            if let Some(x) = h.data.intent.as_mut() {
                x.reboot_done = true;
            }
            return;
        }
        h.data.intent = None;
        let why = format!("step {step_name}: {}", r.outcome.describe());
        let ev = match (intent.stage, r.outcome.succeeded()) {
            (StageRec::Rollback(_), true) => HostEvent::RollbackStepSucceeded,
            (StageRec::Rollback(_), false) => HostEvent::RollbackStepFailed { cause: why.clone() },
            (_, true) => {
                h.data.last_step_end_nanos = now;
                HostEvent::StepSucceeded
            }
            // The step may have run: a person decides (never charged as "nothing ran").
            (_, false) if r.outcome.unknown() => HostEvent::OutcomeUnknown {
                message: why.clone(),
            },
            (StageRec::Step(_), false) if r.outcome.nothing_ran() => {
                HostEvent::StepNotRun { cause: why.clone() }
            }
            (_, false) => HostEvent::StepFailed { cause: why.clone() },
        };
        let _ = self.host_event(&name, i, ev, SYSTEM, &why);
    }

    /// One round of work for every campaign that can move.
    pub fn advance(&mut self) {
        let names: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, r)| {
                r.plan.is_some()
                    && matches!(
                        r.state,
                        CampaignState::Running
                            | CampaignState::Paused(_)
                            | CampaignState::Halted(_)
                            | CampaignState::Aborted
                    )
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let aborted = matches!(self.runs[&name].state, CampaignState::Aborted);
            if aborted
                && !self.runs[&name]
                    .hosts
                    .iter()
                    .any(|h| h.state.is_active() || h.state == HostState::Pending)
            {
                continue;
            }
            self.drive_hosts(&name);
            self.schedule(&name);
            // Hosts started by the scheduler get their first step in the same round.
            self.drive_hosts(&name);
            self.queue_hosts(&name);
        }
    }

    fn drive_hosts(&mut self, name: &str) {
        let n = self.runs[name].hosts.len();
        for i in 0..n {
            self.drive_host(name, i);
        }
    }

    /// Moves one host on if it can: next step, observation, rollback, deadline.
    fn drive_host(&mut self, name: &str, i: usize) {
        let now = self.now();
        let run = &self.runs[name];
        let h = &run.hosts[i];
        let aborted = matches!(run.state, CampaignState::Aborted);
        match (&h.state, h.in_flight) {
            (_, true) => {
                let late = h
                    .data
                    .intent
                    .as_ref()
                    .is_some_and(|x| now > x.deadline.max(h.recovering_since) + EXECUTOR_GRACE);
                if late {
                    let h = &mut self.runs.get_mut(name).expect("exists").hosts[i];
                    h.in_flight = false;
                    h.data.intent = None;
                    let _ = self.host_event(
                        name,
                        i,
                        HostEvent::OutcomeUnknown {
                            message: "the executor did not answer by the step's deadline".into(),
                        },
                        SYSTEM,
                        "executor silent past the deadline",
                    );
                }
            }
            (HostState::Pending, _) if aborted => {
                let _ = self.host_event(
                    name,
                    i,
                    HostEvent::Skip {
                        reason: "campaign aborted".into(),
                    },
                    SYSTEM,
                    "campaign aborted",
                );
            }
            (
                HostState::Running { .. } | HostState::Verifying | HostState::RollingBack { .. },
                false,
            ) if aborted => {
                let h = &mut self.runs.get_mut(name).expect("exists").hosts[i];
                h.data.intent = None;
                let _ = self.host_event(
                    name,
                    i,
                    HostEvent::OutcomeUnknown {
                        message: "the campaign was aborted before this host finished".into(),
                    },
                    SYSTEM,
                    "campaign aborted",
                );
            }
            (HostState::Running { step }, false) => {
                let step = *step;
                self.stage(name, i, StageRec::Step(step));
            }
            (HostState::RollingBack { step, .. }, false) => {
                let step = *step;
                self.stage(name, i, StageRec::Rollback(step));
            }
            (HostState::Verifying, false) => self.stage(name, i, StageRec::Verify),
            (
                HostState::Failed {
                    rollback_due: true, ..
                },
                false,
            ) => {
                let _ = self.host_event(
                    name,
                    i,
                    HostEvent::BeginRollback,
                    SYSTEM,
                    "rollback after failure",
                );
            }
            _ => {}
        }
    }

    /// Starts or observes a stage of host `i`.
    fn stage(&mut self, name: &str, i: usize, stage: StageRec) {
        let (now, now_nanos) = (self.now(), self.now_nanos());
        let run = &self.runs[name];
        let Some(spec) = run.spec.clone() else { return };
        let host = run
            .plan
            .as_ref()
            .map(|p| p.hosts[i].name.clone())
            .unwrap_or_default();
        let h = &run.hosts[i];
        if let Some(intent) = h.data.intent.clone() {
            if intent.stage != stage {
                // Stale intent from an earlier stage: cannot happen, but never guess.
                return;
            }
            self.observe_stage(name, i, &spec, &intent, now, now_nanos);
            return;
        }
        // A new stage attempt: window re-check before steps (not rollbacks, not verify).
        let step = stage_step(&spec, stage).cloned();
        if let StageRec::Step(k) = stage {
            let calendar = match self.calendar() {
                Ok(c) => c,
                Err(_) => return,
            };
            let labels = Arc::clone(&self.labels);
            let Some(l) = labels.get(&host) else { return };
            if let StepFit::Wait { .. } = schedule::step_fit(&spec, &calendar, l, k as usize, now) {
                return;
            }
        }
        let Some(fence) = self.parts.lease.token() else {
            return;
        };
        let timeout = match (&step, stage) {
            (Some(s), _) => s.timeout,
            (None, _) => spec.verify_timeout,
        };
        let boot_before = self
            .parts
            .observer
            .observe(&host, &Expectations::default())
            .ok()
            .flatten()
            .map(|o| o.boot_id)
            .unwrap_or_default();
        let run = self.runs.get_mut(name).expect("exists");
        let h = &mut run.hosts[i];
        h.data.attempt += 1;
        let attempt = h.data.attempt;
        let stage_text = match stage {
            StageRec::Step(k) => format!("s{k}"),
            StageRec::Verify => "v".into(),
            StageRec::Rollback(k) => format!("r{k}"),
        };
        let intent = Intent {
            campaign: run.name.clone(),
            host: host.clone(),
            stage,
            attempt,
            intent_id: format!("{}-{i}-{stage_text}-{attempt}", run.id),
            deadline: now + timeout,
            boot_before,
            since_nanos: if stage == StageRec::Verify {
                h.data.last_step_end_nanos.max(1)
            } else {
                now_nanos
            },
            fence,
            reboot_done: false,
        };
        h.data.intent = Some(intent.clone());
        h.dirty = true;
        let timeout = Duration::from_secs(timeout.max(1) as u64);
        if let Some(req) = step.and_then(|s| super::recover::step_request(&intent, &s, timeout)) {
            h.in_flight = true;
            self.round.dispatch.push((run.id.clone(), i, req));
        }
    }

    /// Verification, `wait_report`, and a reboot's wait for a new boot id.
    fn observe_stage(
        &mut self,
        name: &str,
        i: usize,
        spec: &crate::campaign::CampaignSpec,
        intent: &Intent,
        now: i64,
        now_nanos: i64,
    ) {
        let run = &self.runs[name];
        let step = stage_step(spec, intent.stage);
        let expect = match step.map(|s| &s.action) {
            Some(StepAction::WaitReport(rule)) => Expectations::rule(rule),
            Some(StepAction::Reboot) => Expectations::default(),
            Some(StepAction::Ssh(_)) => return, // not an observation
            None => run.expect.clone(),
        };
        if matches!(step.map(|s| &s.action), Some(StepAction::Reboot)) && !intent.reboot_done {
            return;
        }
        let health_before = run.hosts[i].data.health_before;
        let obs: Option<Observation> = self
            .parts
            .observer
            .observe(&intent.host, &expect)
            .ok()
            .flatten();
        let fresh = obs.as_ref().filter(|o| o.report_nanos > intent.since_nanos);
        let verdict: Option<Result<String, String>> = match (step.map(|s| &s.action), fresh) {
            (Some(StepAction::Reboot), Some(o))
                if !o.boot_id.is_empty() && o.boot_id != intent.boot_before =>
            {
                Some(Ok(format!("back with boot id {}", o.boot_id)))
            }
            (Some(StepAction::WaitReport(_)), Some(o)) if o.unmet.is_empty() => {
                Some(Ok("report condition holds".into()))
            }
            (None, Some(o)) if health_rank(o.health) > health_rank(health_before) => Some(Err(
                format!("health got worse after the steps ({:?})", o.health_reasons),
            )),
            (None, Some(o)) if o.unmet.is_empty() => Some(Ok(
                "a fresh report shows the change and no drift on its fields".into(),
            )),
            _ if now >= intent.deadline => {
                let why = match fresh {
                    None => "no fresh report arrived".to_string(),
                    Some(o) => o.unmet.join("; "),
                };
                Some(Err(format!("timed out: {why}")))
            }
            _ => None,
        };
        let Some(verdict) = verdict else { return };
        let canary = run.plan.as_ref().is_some_and(|p| p.hosts[i].canary);
        let run = self.runs.get_mut(name).expect("exists");
        let h = &mut run.hosts[i];
        h.data.intent = None;
        h.dirty = true;
        let label = step
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "verify".into());
        push_bounded(
            &mut h.data.steps,
            StepRec {
                stage: intent.stage,
                name: label.clone(),
                attempt: intent.attempt,
                intent_id: intent.intent_id.clone(),
                outcome: if verdict.is_ok() {
                    "observed".into()
                } else {
                    "failed".into()
                },
                exit_code: 0,
                detail: match &verdict {
                    Ok(s) | Err(s) => s.clone(),
                },
                started_nanos: intent.since_nanos,
                ended_nanos: now_nanos,
                stdout: String::new(),
                stderr: String::new(),
            },
            records::MAX_STEP_HISTORY,
        );
        let ev = match (intent.stage, verdict) {
            (StageRec::Verify, Ok(w)) => {
                if canary && let Some(o) = &obs {
                    run.data.soak.retain(|s| s.host != intent.host);
                    run.data.soak.push(SoakRec {
                        host: intent.host.clone(),
                        verified_at: now,
                        boot_id: o.boot_id.clone(),
                        health_reasons: o.health_reasons.iter().cloned().collect(),
                        drift: o.drift.iter().cloned().collect(),
                        reports: vec![],
                    });
                }
                (HostEvent::VerifyPassed, w)
            }
            (StageRec::Verify, Err(w)) => (
                HostEvent::VerifyFailed {
                    cause: format!("verify: {w}"),
                },
                w,
            ),
            (StageRec::Step(_), Ok(w)) => {
                h.data.last_step_end_nanos = now_nanos;
                (HostEvent::StepSucceeded, w)
            }
            (StageRec::Step(_), Err(w)) => (
                HostEvent::StepFailed {
                    cause: format!("{label}: {w}"),
                },
                w,
            ),
            (StageRec::Rollback(_), Ok(w)) => (HostEvent::RollbackStepSucceeded, w),
            (StageRec::Rollback(_), Err(w)) => (
                HostEvent::RollbackStepFailed {
                    cause: format!("{label}: {w}"),
                },
                w,
            ),
        };
        let _ = self.host_event(name, i, ev.0, SYSTEM, &ev.1);
    }
}

/// The step a stage runs (None for verification).
pub fn stage_step(spec: &crate::campaign::CampaignSpec, stage: StageRec) -> Option<&Step> {
    match stage {
        StageRec::Step(k) => spec.steps.get(k as usize),
        StageRec::Rollback(k) => spec.rollback.get(k as usize),
        StageRec::Verify => None,
    }
}

pub fn pause_text(r: &PauseReason) -> String {
    match r {
        PauseReason::Person(p) => format!("paused by {p}"),
        PauseReason::WindowClosed { until: Some(t) } => format!(
            "waiting for a window: resumes by itself at {}",
            crate::campaign::render::instant(*t)
        ),
        PauseReason::WindowClosed { until: None } => {
            "waiting for a window: none fits in the next 30 days".into()
        }
        PauseReason::AwaitingPromotion => {
            "canaries passed their soak: awaiting promotion by a non-author approver".into()
        }
        PauseReason::NeedsAttention(m) => m.clone(),
    }
}

pub fn halt_text(r: &state::HaltReason) -> String {
    match r {
        state::HaltReason::Budget { charged, allowed } => {
            format!("halted: {charged} failed or unknown hosts exceed the budget of {allowed}")
        }
        state::HaltReason::CanaryFailed { host } => {
            format!("halted before the first wave: canary {host} failed")
        }
        state::HaltReason::DirtySoak { host, why } => {
            format!("halted before the first wave: soak of canary {host}: {why}")
        }
    }
}

fn waiting_text(w: &Waiting) -> String {
    match w {
        Waiting::Window { until: Some(t) } => format!(
            "waiting for a window (next fit {})",
            crate::campaign::render::instant(*t)
        ),
        Waiting::Window { until: None } => "waiting for a window".into(),
        Waiting::Concurrency => String::new(),
        Waiting::Topology => "a topology cap holds the next hosts".into(),
        Waiting::BatchPause { until } => format!(
            "pause between waves until {}",
            crate::campaign::render::instant(*until)
        ),
        Waiting::CanaryGate => "canaries: soak and promotion before the first wave".into(),
        Waiting::NeedsAttention => "hosts need a person's attention".into(),
        Waiting::InFlight => String::new(),
    }
}
