//! The engine's state as the API shows it: summaries, the stored resource body, Get
//! responses and reports. Pure functions of a `Run`.

use muster::pb;

use super::engine::{Engine, Run};
use super::records::{StageRec, TransitionRec};
use crate::campaign::host::HostState;
use crate::model::timestamp;

/// Transitions a report keeps.
const MAX_REPORT_TRANSITIONS: usize = 10_000;

pub fn transition(t: &TransitionRec, host: &str) -> pb::CampaignTransition {
    pb::CampaignTransition {
        at: Engine::ts(t.at_nanos),
        host: host.to_string(),
        from: t.from.clone(),
        to: t.to.clone(),
        why: t.why.clone(),
        principal: t.principal.clone(),
    }
}

pub fn counts(run: &Run) -> pb::HostCounts {
    let mut c = pb::HostCounts::default();
    for h in &run.hosts {
        let n = match h.state {
            HostState::Pending => &mut c.pending,
            HostState::Running { .. } => &mut c.running,
            HostState::Verifying => &mut c.verifying,
            HostState::Succeeded => &mut c.succeeded,
            HostState::Failed { .. } => &mut c.failed,
            HostState::RollingBack { .. } => &mut c.rolling_back,
            HostState::RolledBack { .. } => &mut c.rolled_back,
            HostState::Skipped { .. } => &mut c.skipped,
            HostState::NeedsAttention { .. } => &mut c.needs_attention,
        };
        *n += 1;
    }
    c
}

pub fn summary(run: &Run) -> pb::CampaignSummary {
    let tally = run
        .plan
        .as_ref()
        .map(|p| {
            let recs: Vec<_> = run
                .hosts
                .iter()
                .map(|h| crate::campaign::schedule::HostRecord {
                    state: h.state.clone(),
                    finished_at: None,
                })
                .collect();
            crate::campaign::schedule::tally(p, &recs).charged()
        })
        .unwrap_or(0);
    let meta = run.resource.meta.clone().unwrap_or_default();
    pb::CampaignSummary {
        name: run.name.clone(),
        state: run.state.to_pb() as i32,
        message: run.message.clone(),
        counts: Some(counts(run)),
        failures: tally,
        failures_allowed: run.plan.as_ref().map_or(0, |p| p.failures_allowed),
        wave: run.wave.map_or(-1, |w| w as i32),
        waves: run.plan.as_ref().map_or(0, |p| p.waves.len() as u32),
        waiting: run.waiting.clone(),
        window_closes_at: run.window_closes.map(|s| timestamp(s * 1_000_000_000)),
        created_by: meta.created_by,
        approved_by: approved_by(run),
    }
}

fn approved_by(run: &Run) -> Vec<String> {
    run.data
        .approvals
        .iter()
        .filter(|(_, d)| *d == run.digest)
        .map(|(by, _)| by.clone())
        .collect()
}

/// The Campaign resource as stored: spec and status without per-host progress (which lives
/// in the host records).
pub fn stored_body(run: &Run, now: i64, who: &str) -> pb::Campaign {
    let mut meta = run.resource.meta.clone().unwrap_or_default();
    meta.updated_at = Some(timestamp(now));
    meta.updated_by = who.to_string();
    meta.revision = 0;
    pb::Campaign {
        meta: Some(meta),
        spec: run.resource.spec.clone(),
        status: Some(pb::CampaignStatus {
            state: run.state.to_pb() as i32,
            hosts: vec![],
            approved_by: approved_by(run),
            message: run.message.clone(),
            plan: run.plan_pb.clone(),
            digest: run.digest.clone(),
        }),
    }
}

fn step_label(run: &Run, h: &HostState) -> String {
    let spec = run.spec.as_ref();
    let name =
        |s: Option<&crate::campaign::spec::Step>| s.map(|s| s.name.clone()).unwrap_or_default();
    match h {
        HostState::Running { step } => name(spec.and_then(|s| s.steps.get(*step as usize))),
        HostState::RollingBack { step, .. } => {
            name(spec.and_then(|s| s.rollback.get(*step as usize)))
        }
        HostState::Verifying => "verify".into(),
        _ => String::new(),
    }
}

fn host_message(h: &HostState) -> String {
    match h {
        HostState::Failed { cause, .. }
        | HostState::RollingBack { cause, .. }
        | HostState::RolledBack { cause } => cause.clone(),
        HostState::NeedsAttention { message, .. } => message.clone(),
        HostState::Skipped { reason } => reason.clone(),
        _ => String::new(),
    }
}

/// A Get answer.
pub fn response(run: &Run, with_hosts: bool) -> pb::CampaignResponse {
    let mut c = stored_body(run, 0, "");
    c.meta = run.resource.meta.clone().map(|mut m| {
        m.revision = run.revision;
        m
    });
    if with_hosts && let (Some(plan), Some(status)) = (run.plan.as_ref(), c.status.as_mut()) {
        status.hosts = plan
            .hosts
            .iter()
            .zip(&run.hosts)
            .map(|(p, h)| pb::HostProgress {
                device: p.name.clone(),
                state: h.state.to_pb() as i32,
                step: step_label(run, &h.state),
                message: host_message(&h.state),
                started_at: Engine::ts(h.data.started_nanos),
                finished_at: Engine::ts(h.data.finished_nanos),
            })
            .collect();
    }
    pb::CampaignResponse {
        campaign: Some(c),
        summary: Some(summary(run)),
    }
}

/// A Report answer.
pub fn report(run: &Run) -> pb::CampaignReport {
    let dur = |a: i64, b: i64| {
        (a > 0 && b >= a).then(|| pbjson_types::Duration {
            seconds: (b - a) / 1_000_000_000,
            nanos: ((b - a) % 1_000_000_000) as i32,
        })
    };
    let mut transitions: Vec<pb::CampaignTransition> = run
        .data
        .transitions
        .iter()
        .map(|t| transition(t, ""))
        .collect();
    let mut hosts = Vec::new();
    if let Some(plan) = &run.plan {
        for (p, h) in plan.hosts.iter().zip(&run.hosts) {
            transitions.extend(h.data.transitions.iter().map(|t| transition(t, &p.name)));
            hosts.push(pb::HostReport {
                device: p.name.clone(),
                state: h.state.to_pb() as i32,
                message: host_message(&h.state),
                canary: p.canary,
                wave: p.wave as u32,
                started_at: Engine::ts(h.data.started_nanos),
                finished_at: Engine::ts(h.data.finished_nanos),
                duration: dur(h.data.started_nanos, h.data.finished_nanos),
                steps: h
                    .data
                    .steps
                    .iter()
                    .map(|s| pb::StepReport {
                        step: s.name.clone(),
                        phase: match s.stage {
                            StageRec::Rollback(_) => "rollback",
                            StageRec::Verify => "verify",
                            StageRec::Step(_) => "step",
                        }
                        .into(),
                        attempt: s.attempt,
                        outcome: s.outcome.clone(),
                        exit_code: s.exit_code,
                        detail: s.detail.clone(),
                        started_at: Engine::ts(s.started_nanos),
                        duration: dur(s.started_nanos, s.ended_nanos),
                        stdout_excerpt: s.stdout.clone(),
                        stderr_excerpt: s.stderr.clone(),
                        intent: s.intent_id.clone(),
                    })
                    .collect(),
            });
        }
    }
    transitions.sort_by_key(|t| t.at.as_ref().map(|a| (a.seconds, a.nanos)));
    let omitted = transitions.len().saturating_sub(MAX_REPORT_TRANSITIONS);
    transitions.drain(..omitted);
    pb::CampaignReport {
        summary: Some(summary(run)),
        hosts,
        skipped: run
            .plan_pb
            .as_ref()
            .map(|p| p.skipped.clone())
            .unwrap_or_default(),
        transitions,
        transitions_omitted: omitted as u64,
    }
}

/// Whether a summary's state is terminal (Watch ends there).
pub fn terminal(state: i32) -> bool {
    matches!(
        pb::CampaignState::try_from(state),
        Ok(pb::CampaignState::Completed | pb::CampaignState::Aborted)
    )
}

/// A step attempt's captured output, read from its record (no engine round trip).
pub fn step_output(
    inv: &crate::inventory::Inventory,
    name: &str,
    intent: &str,
) -> Result<pb::StepOutputResponse, crate::model::ApiError> {
    let not_found = || crate::model::ApiError::NotFound {
        kind: "step output",
        name: format!("{name}/{intent}"),
    };
    let obj = inv
        .store()
        .get(crate::model::kind_id(pb::ResourceKind::Campaign), name)
        .map_err(crate::inventory::store_error)?
        .ok_or_else(not_found)?;
    if intent.len() > 128
        || !intent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(crate::model::ApiError::invalid(
            "intent",
            "is not an intent id",
        ));
    }
    let raw = inv
        .store()
        .aux_get(&super::records::output_key(&obj.id, intent))
        .map_err(crate::inventory::store_error)?
        .ok_or_else(not_found)?;
    let (out, err) = super::records::decode_output(&raw)?;
    let c = |c: super::executor::CapturedStream| pb::CapturedOutput {
        head: c.head,
        tail: c.tail,
        truncated: c.truncated_bytes,
    };
    Ok(pb::StepOutputResponse {
        stdout: Some(c(out)),
        stderr: Some(c(err)),
    })
}
