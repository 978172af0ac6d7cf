//! Host outcomes that go to the audit trail besides the host's own record: per-host
//! transitions stay out of it (ARCHITECTURE, "departs"), but a host presenting another key
//! than its pinned one is a security event, so it is recorded with both fingerprints.

use muster::pb::ResourceKind;

use super::engine::{Engine, SYSTEM};
use super::executor::{Outcome, StepResult};
use crate::inventory::ChangeContext;

/// The audit verb of a host-key mismatch.
pub const HOST_KEY_MISMATCH_VERB: &str = "campaign host-key mismatch";

impl Engine {
    /// Audits what needs auditing in a step's result (before the engine applies it).
    pub fn audit_step_result(&self, campaign_id: &str, i: usize, r: &StepResult) {
        let reason = match &r.outcome {
            Outcome::HostKeyMismatch { .. } => {
                "the host's SSH key is not its pinned one; nothing was run on it"
            }
            Outcome::HostKeyChanged { .. } => {
                "the host's SSH key stopped matching its pin after the step was handed to it; \
                 its outcome is unknown"
            }
            _ => return,
        };
        let Some(run) = self.runs.values().find(|r| r.id == campaign_id) else {
            return;
        };
        let host = run
            .plan
            .as_ref()
            .and_then(|p| p.hosts.get(i))
            .map(|h| h.name.as_str())
            .unwrap_or_default();
        self.inventory.record_server_refusal(
            SYSTEM,
            HOST_KEY_MISMATCH_VERB,
            (ResourceKind::Campaign, &run.name),
            &ChangeContext {
                reason: reason.into(),
                origin: "campaign".into(),
                ..Default::default()
            },
            &format!("host {host}: {}", r.outcome.describe()),
        );
    }
}
