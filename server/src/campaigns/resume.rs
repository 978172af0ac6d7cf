//! What a restarted engine does with a stage that was in flight when the server stopped
//! (notes §4.7), pure so every case is a unit test: observations rerun, an idempotent step
//! reruns as a new attempt, any other step is first looked up on the host (it ran detached
//! under its intent id: a finished run's outcome is recorded, a running one waited for), and
//! only when the host cannot tell becomes NEEDS_ATTENTION. A reboot is never issued
//! twice: if the host came back with a new boot id the step is done, before its deadline it is
//! waited for, after it a person must look.

use super::records::{Intent, StageRec};
use crate::campaign::spec::{CampaignSpec, StepAction};

/// What to do with an interrupted stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Keep observing under the same intent (verification, wait_report, a reboot's wait).
    Observe,
    /// Run the step again as attempt `attempt + 1`.
    Rerun,
    /// Ask the executor what became of the run (`Executor::recover`); if it cannot tell,
    /// NEEDS_ATTENTION with this message.
    AskHost(String),
    /// Outcome unknown: NEEDS_ATTENTION with this message.
    Attention(String),
}

/// The step a stage names, if any.
fn step_of(spec: &CampaignSpec, stage: StageRec) -> Option<&crate::campaign::spec::Step> {
    match stage {
        StageRec::Step(i) => spec.steps.get(i as usize),
        StageRec::Rollback(i) => spec.rollback.get(i as usize),
        StageRec::Verify => None,
    }
}

/// Decides for one intent found without an outcome. `boot_now` is the host's boot id in its
/// latest report (empty if none).
pub fn recover(spec: &CampaignSpec, intent: &Intent, boot_now: &str, now: i64) -> Recovery {
    let Some(step) = step_of(spec, intent.stage) else {
        return Recovery::Observe;
    };
    match &step.action {
        StepAction::WaitReport(_) => Recovery::Observe,
        StepAction::Reboot => {
            let rebooted = !boot_now.is_empty() && boot_now != intent.boot_before;
            if rebooted || now < intent.deadline {
                Recovery::Observe
            } else {
                Recovery::Attention(format!(
                    "the server restarted during reboot step {:?} (intent {}); the host has not \
                     reported a new boot id by the deadline, and a reboot is never repeated \
                     automatically",
                    step.name, intent.intent_id
                ))
            }
        }
        StepAction::Ssh(_) if step.idempotent => Recovery::Rerun,
        StepAction::Ssh(_) => Recovery::AskHost(format!(
            "the server restarted while step {:?} (intent {}, attempt {}) was running; it is not \
             marked idempotent and its outcome is unknown: check the host, then retry, \
             mark-failed or rollback",
            step.name, intent.intent_id, intent.attempt
        )),
    }
}
